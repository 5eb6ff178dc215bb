"""The original RENT-A-HAL's REST routes, in their shapes, but behind an API key, queued
and billed like any query."""
import base64
import io
import wave

import pytest
import requests

from accounts.actions.keys import create_key
from accounts.models import Charge, Query
from pools import actions as pools
from pools.testing.fake_answers import png_for
from tests.doors import start_daphne, stop_daphne

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker(start_worker):
    start_worker("--concurrency", "16")
    process, base = start_daphne()
    yield base
    stop_daphne(process)


@pytest.fixture
def post(broker, alice):
    _, secret = create_key(alice.guid, acting_user=None)

    def send(route: str, body: dict, *, key: str | None = secret) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(f"{broker}{route}", json=body, headers=headers, timeout=30)

    return send


def test_chat_answers_the_query_result_fields_and_bills_the_key_user(post, fake_server, register_worker, alice):
    register_worker(fake_server, wire_format="predict", name="classic-box")
    response = post("/api/chat", {"prompt": "hello", "model_type": "worker_node", "model_name": ""})

    answer = response.json()
    assert response.status_code == 200
    assert (answer["result"], answer["result_type"], answer["worker"]) == ("echo: hello", "text", "classic-box")
    query = Query.objects.get(pk=answer["query_id"])
    assert (query.user_id, query.query_type, float(query.cost)) == (alice.guid, "chat", answer["cost"])
    assert Charge.objects.filter(query=query).count() == 1


def test_vision_and_imagine_keep_their_shapes(post, fake_server, register_worker):
    register_worker(fake_server, wire_format="predict", query_type="vision", name="eyes")
    register_worker(fake_server, wire_format="a1111", query_type="imagine", name="painter")
    image = base64.b64encode(png_for("x")).decode()
    seen = post("/api/vision", {"prompt": "what", "image": image}).json()
    drawn = post("/api/imagine", {"prompt": "a fox"}).json()

    assert seen["result"] == f"echo: what [image: {len(png_for('x'))} bytes]"
    assert (base64.b64decode(drawn["result"]), drawn["result_type"]) == (png_for("a fox"), "image")


def test_a_request_without_a_valid_key_is_refused_and_writes_nothing(post):
    missing = post("/api/chat", {"prompt": "hello"}, key=None)
    malformed = post("/api/chat", {"prompt": "hello"}, key="sk-not-ours")

    assert (missing.status_code, missing.json()["error"]["code"]) == (401, "invalid_api_key")
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (401, "invalid_api_key")
    assert Query.objects.count() == 0


def test_speech_routes_refuse_clearly_while_no_speech_worker_serves(post):
    heard = post("/api/whisper", {"audio": base64.b64encode(wav_of_silence()).decode()})
    spoken = post("/api/bark", {"text": "hello"})

    assert (heard.status_code, heard.json()["error"]["code"]) == (503, "no_worker")
    assert (spoken.status_code, spoken.json()["error"]["code"]) == (503, "no_worker")
    assert Query.objects.count() == 0


def test_bad_bodies_are_refused_with_the_field_at_fault(post):
    empty = post("/api/chat", {"prompt": ""})
    not_base64 = post("/api/vision", {"prompt": "what", "image": "%%%"})

    assert (empty.status_code, empty.json()["error"]["code"]) == (400, "missing_field")
    assert (not_base64.status_code, not_base64.json()["error"]["code"]) == (400, "bad_field")


def wav_of_silence() -> bytes:
    sound = io.BytesIO()
    with wave.open(sound, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * 1600)
    return sound.getvalue()


def test_bark_speaks_and_whisper_hears_it_through_the_speech_realm_billed_to_the_key_user(
    post, speech_to_text_url, text_to_speech_url, fake_server, alice, monkeypatch
):
    monkeypatch.setenv("MODEL_READ_TIMEOUT", "60")
    for name, url, pool in (("whisper", speech_to_text_url, "$SPEECH_TO_TEXT"), ("piper", text_to_speech_url, "$TEXT_TO_SPEECH")):
        pools.add_worker(name=name, address=url, query_type="speech", wire_format="openai_audio")
        pools.create_pool(pool, query_type="speech", realm="$SPEECH", members=[name])

    spoken = post("/api/bark", {"text": "The capital of France is Paris."})
    heard = post("/api/whisper", {"audio": spoken.json()["audio"]})

    assert (spoken.status_code, heard.status_code) == (200, 200)
    assert base64.b64decode(spoken.json()["audio"])[:4] == b"RIFF"
    words = heard.json()["text"].lower()
    assert "capital" in words and "paris" in words
    for answer in (spoken.json(), heard.json()):
        query = Query.objects.get(pk=answer["query_id"])
        assert (query.user_id, query.query_type) == (alice.guid, "speech")
        assert Charge.objects.filter(query=query).count() == 1


def test_whisper_refuses_audio_that_is_neither_wav_nor_webm(post):
    refused = post("/api/whisper", {"audio": base64.b64encode(b"ID3 not a recording").decode()})

    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "unsupported_audio")
    assert Query.objects.count() == 0
