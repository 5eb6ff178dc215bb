"""The bundled speech models answer OpenAI's audio routes offline, and the OpenAI audio
client talks to them (and to any server of that wire format)."""
import base64
import dataclasses

import aiohttp
import pytest

from pools.clients import CallLimits, ModelRequest, ModelServerError, client_for
from pools.testing.speech_servers import wav_to_webm

SENTENCE = "The capital of France is Paris."


@dataclasses.dataclass
class SpeechWorker:
    """What a client needs of a worker row."""

    base_url: str
    name: str = "speech"
    model: str = ""
    api_key: str = ""


async def call(url: str, request: ModelRequest):
    async with aiohttp.ClientSession() as session:
        return await client_for("openai_audio").call(session, SpeechWorker(url), request, limits=CallLimits(read_timeout=60))


async def post(url: str, **kwargs) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, **kwargs) as response:
            return response.status, await response.read(), response.content_type


@pytest.fixture(scope="module")
def spoken_sentence(text_to_speech_url) -> bytes:
    import asyncio

    answer = asyncio.run(call(text_to_speech_url, ModelRequest(prompt=SENTENCE, query_type="speech")))
    return base64.b64decode(answer.result)


def test_text_to_speech_answers_a_wav_file(spoken_sentence):
    assert spoken_sentence[:4] == b"RIFF" and spoken_sentence[8:12] == b"WAVE"
    # 16-bit mono at 22,050 Hz: a sentence lasts more than a second.
    assert len(spoken_sentence) > 44_100


@pytest.mark.parametrize("audio_format", ["wav", "webm"])
async def test_speech_to_text_transcribes_the_spoken_sentence(speech_to_text_url, spoken_sentence, audio_format):
    audio = spoken_sentence if audio_format == "wav" else wav_to_webm(spoken_sentence)
    request = ModelRequest(prompt="", query_type="speech", audio=base64.b64encode(audio).decode(), audio_format=audio_format)

    answer = await call(speech_to_text_url, request)

    assert answer.result_type == "text"
    words = answer.result.lower()
    assert "capital" in words and "paris" in words


async def test_speech_to_text_refuses_a_file_that_is_not_audio(speech_to_text_url):
    form = aiohttp.FormData()
    form.add_field("file", b"this is plain text, not sound", filename="notes.wav")

    status, body, _ = await post(f"{speech_to_text_url}/v1/audio/transcriptions", data=form)

    assert status == 400
    assert b"not audio" in body


async def test_speech_to_text_refuses_audio_longer_than_its_limit(spoken_sentence):
    from pools.testing.speech_servers import running

    form = aiohttp.FormData()
    form.add_field("file", spoken_sentence, filename="sentence.wav")
    with running("serve_speech_to_text", "--max-seconds", "0.5") as url:
        status, body, _ = await post(f"{url}/v1/audio/transcriptions", data=form)

    assert status == 400
    assert b"the limit is 0.5 s" in body


async def test_client_reports_a_refused_transcription_as_a_bad_request(speech_to_text_url):
    request = ModelRequest(prompt="", query_type="speech", audio=base64.b64encode(b"not sound").decode(), audio_format="wav")

    with pytest.raises(ModelServerError) as refused:
        await call(speech_to_text_url, request)

    assert refused.value.kind == "client"


@pytest.mark.parametrize(
    "payload, problem",
    [({"input": ""}, b"non-empty"), ({"input": "x" * 4097}, b"the limit is 4096"), ({"input": "hi", "response_format": "mp3"}, b"use wav")],
    ids=["empty", "too long", "mp3"],
)
async def test_text_to_speech_refuses_what_it_cannot_speak(text_to_speech_url, payload, problem):
    status, body, _ = await post(f"{text_to_speech_url}/v1/audio/speech", json=payload)

    assert status == 400
    assert problem in body


@pytest.mark.parametrize("fixture", ["speech_to_text_url", "text_to_speech_url"])
async def test_speech_servers_list_their_model_for_the_health_probe(request, fixture):
    url = request.getfixturevalue(fixture)
    async with aiohttp.ClientSession() as session:
        status = await client_for("openai_audio").probe(session, SpeechWorker(url), timeout=5)

    assert status == 200
