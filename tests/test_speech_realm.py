"""The speech realm end to end: /ws → the speech realm's queue → a real RQ worker → the
bundled Whisper and Piper servers (and a chat pool) over HTTP → a billed result."""
import base64

import pytest
from asgiref.sync import sync_to_async as sync

from accounts.models import Charge, Query
from pools import actions as pools
from pools.testing.speech_servers import wav_to_webm

pytestmark = pytest.mark.django_db(transaction=True)

SENTENCE = "The capital of France is Paris."


@pytest.fixture
def speech_broker(monkeypatch, start_worker, speech_to_text_url, text_to_speech_url, fake_server):
    """The speech realm's two pools on the real speech servers, a chat pool on the fake
    server (it answers "echo: <prompt>"), and a realm worker; whisper may take seconds on a
    loaded machine, so calls get a minute."""
    monkeypatch.setenv("MODEL_READ_TIMEOUT", "60")
    for name, url, pool in (("whisper", speech_to_text_url, "$SPEECH_TO_TEXT"), ("piper", text_to_speech_url, "$TEXT_TO_SPEECH")):
        pools.add_worker(name=name, address=url, query_type="speech", wire_format="openai_audio")
        pools.create_pool(pool, query_type="speech", realm="$SPEECH", members=[name])
    pools.add_worker(name="chatter", address=fake_server.url, query_type="chat", wire_format="openai", model="fake-model")
    start_worker("--concurrency", "4")


def speech_query(audio: bytes, **fields) -> dict:
    query = {"prompt": "", "query_type": "speech", "model_type": "speech", "model_name": "", **fields}
    return {"type": "submit_query", "query": {"audio": base64.b64encode(audio).decode(), **query}}


async def spoken(client, text: str) -> bytes:
    await client.send({"type": "text_to_speech", "text": text})
    result = (await client.receive_until("speech_result", timeout=90))[-1]
    return base64.b64decode(result["audio"])


async def charges_of(query_id: str) -> list[Charge]:
    return await sync(list)(Charge.objects.filter(query_id=query_id))


async def test_a_spoken_sentence_is_transcribed_back_through_the_broker_and_both_are_billed(speech_broker, alice, connect):
    client = await connect(alice.guid)

    audio = await spoken(client, SENTENCE)
    await client.send({"type": "speech_to_text", "audio": base64.b64encode(audio).decode()})
    frames = await client.receive_until("transcription_result", timeout=90)

    assert audio[:4] == b"RIFF"
    words = frames[-1]["text"].lower()
    assert "capital" in words and "paris" in words
    assert frames[0]["type"] == "queue_update" and frames[0]["realm"] == "$SPEECH"
    assert frames[-1]["worker"] == "whisper"
    speak_id = next(frame["query_id"] for frame in client.frames if frame["type"] == "speech_result")
    for query_id in (speak_id, frames[-1]["query_id"]):
        [charge] = await charges_of(query_id)
        assert float(charge.amount) > 0


@pytest.mark.parametrize("audio_format", ["wav", "webm"])
async def test_a_speech_query_is_heard_answered_by_the_chat_pool_and_billed_once(speech_broker, alice, connect, audio_format):
    client = await connect(alice.guid)
    audio = await spoken(client, SENTENCE)
    if audio_format == "webm":
        audio = wav_to_webm(audio)

    await client.send(speech_query(audio))
    result = (await client.receive_until("query_result", timeout=90))[-1]

    assert result["result_type"] == "text"
    assert result["result"].lower().startswith("echo:")
    assert "paris" in result["result"].lower()
    assert result["worker"] == "whisper, chatter"
    query = await sync(Query.objects.get)(pk=result["query_id"])
    assert "capital" in query.prompt.lower()
    [charge] = await charges_of(result["query_id"])
    assert charge.amount == query.cost and float(query.cost) == result["cost"]


async def test_a_speech_query_asking_for_audio_is_answered_aloud(speech_broker, alice, connect):
    client = await connect(alice.guid)
    audio = await spoken(client, SENTENCE)

    await client.send(speech_query(audio, result_type="audio"))
    result = (await client.receive_until("query_result", timeout=90))[-1]

    assert result["result_type"] == "audio"
    assert base64.b64decode(result["result"])[:4] == b"RIFF"
    assert "capital" in result["heard"].lower()
    assert result["worker"] == "whisper, chatter, piper"
    assert len(await charges_of(result["query_id"])) == 1


async def test_webm_that_cannot_be_decoded_fails_the_query_and_charges_nothing(speech_broker, alice, connect):
    client = await connect(alice.guid)

    await client.send(speech_query(b"\x1a\x45\xdf\xa3" + b"not really a recording" * 10))
    error = (await client.receive_until("error", timeout=90))[-1]

    assert error["code"] == "query_failed"
    assert await charges_of(error["query_id"]) == []


@pytest.mark.parametrize(
    "frame, code",
    [
        (speech_query(b"ID3\x03\x00 an mp3 file"), "unsupported_audio"),
        (speech_query(b"plain words, no sound"), "unsupported_audio"),
        (speech_query(b"RIFF\x00\x00\x00\x00WAVEbroken"), "unsupported_audio"),
        ({"type": "submit_query", "query": {"prompt": "", "query_type": "speech", "audio": "%%%"}}, "bad_field"),
        ({"type": "submit_query", "query": {"prompt": "hi", "query_type": "speech"}}, "missing_field"),
        ({"type": "speech_to_text", "audio": "data:audio/ogg;base64," + base64.b64encode(b"OggS....").decode()}, "unsupported_audio"),
        ({"type": "text_to_speech", "text": ""}, "missing_field"),
        ({"type": "text_to_speech", "text": "x" * 4097}, "prompt_too_long"),
    ],
    ids=["mp3", "text", "broken wav", "not base64", "no audio", "ogg", "empty text", "long text"],
)
async def test_bad_audio_or_text_is_refused_and_nothing_is_written(alice, connect, default_realms, frame, code):
    client = await connect(alice.guid)

    await client.send(frame)
    error = await client.receive()

    assert (error["type"], error["code"]) == ("error", code)
    assert await sync(Query.objects.filter(user_id=alice.guid).count)() == 0


async def test_audio_over_the_size_limit_is_refused(alice, connect, default_realms, settings):
    settings.RENTAHAL_MAX_AUDIO_BYTES = 1000
    client = await connect(alice.guid)

    await client.send(speech_query(b"RIFF" + b"\x00" * 2000))
    error = await client.receive()

    assert error["code"] == "audio_too_large"


async def test_a_wav_longer_than_the_limit_is_refused(alice, connect, default_realms, settings, text_to_speech_url):
    import urllib.request

    settings.RENTAHAL_MAX_AUDIO_SECONDS = 0.5
    request = urllib.request.Request(
        f"{text_to_speech_url}/v1/audio/speech", data=b'{"input": "The capital of France is Paris."}',
        headers={"Content-Type": "application/json"},
    )
    audio = await sync(lambda: urllib.request.urlopen(request, timeout=60).read())()
    client = await connect(alice.guid)

    await client.send(speech_query(audio))
    error = await client.receive()

    assert error["code"] == "audio_too_long"
    assert "the limit is 0.5 s" in error["message"]
