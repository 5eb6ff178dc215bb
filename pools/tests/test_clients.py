"""Every model-server client against the fake model server, over real HTTP on loopback."""
import asyncio
import base64
import dataclasses
import socket

import aiohttp
import orjson
import pytest

from pools.clients import CallLimits, ModelRequest, ModelServerError, client_for
from pools.testing.fake_answers import FakeConfig
from pools.testing.fake_server import run_in_thread

FORMATS = ["predict", "a1111", "ollama", "openai", "anthropic", "huggingface"]
TEXT_FORMATS = ["predict", "ollama", "openai", "anthropic", "huggingface"]
STREAMING_FORMATS = ["ollama", "openai", "anthropic", "huggingface"]
HOSTED_FORMATS = {"anthropic": "ANTHROPIC_API_KEY", "huggingface": "HF_TOKEN"}
PROBED_FORMATS = {
    "predict": "/health", "ollama": "/api/tags", "openai": "/v1/models", "anthropic": "/v1/models", "huggingface": "/health",
}
QUICK = CallLimits(connect_timeout=1.0, read_timeout=5.0)


@dataclasses.dataclass(frozen=True)
class FakeWorker:
    name: str
    base_url: str
    model: str = ""
    api_key: str = ""


@pytest.fixture(scope="module")
def fake_server():
    with run_in_thread() as server:
        yield server


@pytest.fixture
def fake(fake_server):
    """The module's fake server, with every knob back at its default."""
    fake_server.configure(**dataclasses.asdict(FakeConfig()))
    return fake_server


@pytest.fixture(autouse=True)
def provider_keys(settings):
    """Keys for the hosted formats from the environment, as an operator would set them."""
    for variable in HOSTED_FORMATS.values():
        setattr(settings, f"RENTAHAL_{variable}", f"{variable.lower()}-from-env")


@pytest.fixture
def worker(fake):
    return FakeWorker(name="fake-worker", base_url=fake.url)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def closed_port_url():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def ask(session, worker, wire_format, prompt="What is the capital of France?", *, limits=QUICK, **fields):
    return await client_for(wire_format).call(
        session, worker, ModelRequest(prompt=prompt, query_type="chat", **fields), limits=limits
    )


async def failure_of(session, worker, wire_format, *, limits=QUICK) -> ModelServerError:
    with pytest.raises(ModelServerError) as caught:
        await ask(session, worker, wire_format, limits=limits)
    return caught.value


@pytest.mark.parametrize("wire_format", TEXT_FORMATS)
async def test_text_formats_answer_with_the_whole_text(session, worker, wire_format):
    answer = await ask(session, worker, wire_format)

    assert answer.result == "echo: What is the capital of France?"
    assert answer.result_type == "text"


async def test_a1111_answers_a_base64_png(session, worker):
    answer = await ask(session, worker, "a1111", prompt="a lighthouse at dusk")

    assert answer.result_type == "image"
    assert base64.b64decode(answer.result).startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("wire_format", STREAMING_FORMATS)
async def test_stream_delivers_chunks_in_order(session, worker, wire_format):
    chunks = []

    async def collect(text):
        chunks.append(text)

    answer = await client_for(wire_format).call(
        session, worker, ModelRequest(prompt="tell me a story", query_type="chat"), limits=QUICK, on_chunk=collect
    )

    assert chunks == ["echo: ", "tell ", "me ", "a ", "story"]
    assert answer.result == "echo: tell me a story"


@pytest.mark.parametrize("wire_format", HOSTED_FORMATS)
async def test_hosted_formats_send_the_workers_own_key_where_the_provider_reads_it(session, fake, wire_format):
    fake.configure(api_key="sk-worker")
    keyed = FakeWorker(name="keyed", base_url=fake.url, model="claude-fake", api_key="sk-worker")

    answer = await ask(session, keyed, wire_format, prompt="hi")
    refused = await failure_of(session, FakeWorker(name="env-keyed", base_url=fake.url, model="claude-fake"), wire_format)

    assert answer.result == "echo: hi"
    assert (refused.kind, refused.status) == ("auth", 401)


@pytest.mark.parametrize(("wire_format", "variable"), HOSTED_FORMATS.items())
async def test_hosted_formats_fall_back_to_the_providers_key_in_the_environment(session, fake, settings, wire_format, variable):
    setattr(settings, f"RENTAHAL_{variable}", "sk-env")
    fake.configure(api_key="sk-env")

    answer = await ask(session, FakeWorker(name="env-keyed", base_url=fake.url, model="claude-fake"), wire_format, prompt="hi")

    assert answer.result == "echo: hi"


@pytest.mark.parametrize(("wire_format", "variable"), HOSTED_FORMATS.items())
async def test_a_hosted_worker_without_any_key_fails_as_auth_without_calling(session, worker, fake, settings, wire_format, variable):
    setattr(settings, f"RENTAHAL_{variable}", "")
    fake.reset_stats()

    error = await failure_of(session, worker, wire_format)

    assert (error.kind, error.is_server_fault) == ("auth", True)
    assert error.message == f"fake-worker: No API key for {wire_format}: give the worker its key, or set {variable} in the environment."
    assert fake.stats()["requests"] == {}


async def test_the_fake_messages_api_refuses_a_request_without_its_version_header(session, fake):
    body = {"model": "claude-fake", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(f"{fake.url}/v1/messages", data=orjson.dumps(body)) as response:
        error = orjson.loads(await response.read())

    assert response.status == 400
    assert error == {"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"}}


@pytest.mark.parametrize(
    ("path", "body", "text_of"),
    [
        (
            "/v1/messages",
            {"model": "claude-fake", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
            lambda answer: answer["content"][0]["text"],
        ),
        ("/", {"inputs": "hi", "parameters": {"max_new_tokens": 16}}, lambda answer: answer[0]["generated_text"]),
    ],
    ids=["anthropic", "huggingface"],
)
async def test_the_fake_hosted_formats_answer_in_one_piece_when_not_streaming(session, fake, path, body, text_of):
    headers = {"anthropic-version": "2023-06-01"}
    async with session.post(f"{fake.url}{path}", data=orjson.dumps(body), headers=headers) as response:
        answer = orjson.loads(await response.read())

    assert response.status == 200
    assert text_of(answer) == "echo: hi"


@pytest.mark.parametrize("wire_format", TEXT_FORMATS)
async def test_image_reaches_the_model_in_the_formats_own_way(session, worker, wire_format):
    image = base64.b64encode(b"0123456789").decode()

    answer = await ask(session, worker, wire_format, prompt="what is this?", image=image)

    assert answer.result == "echo: what is this? [image: 10 bytes]"


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_answer_records_time_to_first_byte(session, worker, fake, wire_format):
    fake.configure(delay=0.05)

    answer = await ask(session, worker, wire_format)

    assert 0.05 <= answer.time_to_first_byte < QUICK.read_timeout


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_server_that_never_answers_is_a_timeout(session, worker, fake, wire_format):
    fake.configure(hang=True)

    error = await failure_of(session, worker, wire_format, limits=CallLimits(read_timeout=0.2))

    assert error.kind == "timeout"
    assert error.message == "fake-worker timed out after 0.2s"


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_http_500_is_the_servers_fault(session, worker, fake, wire_format):
    fake.configure(failure_rate=1.0)

    error = await failure_of(session, worker, wire_format)

    assert (error.kind, error.status, error.is_server_fault) == ("server", 500, True)
    assert error.message == "fake-worker failed (HTTP 500): fake failure (HTTP 500)"


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_http_429_is_rate_limited_for_the_seconds_in_retry_after(session, worker, fake, wire_format):
    fake.configure(failure_rate=1.0, fail_status=429, retry_after=7)

    error = await failure_of(session, worker, wire_format)

    assert (error.kind, error.retry_after) == ("rate_limited", 7.0)
    assert "fake-worker is rate limiting requests (HTTP 429, retry after 7s)" in error.message


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_http_400_is_the_requests_fault_and_not_retried(session, worker, fake, wire_format):
    fake.configure(failure_rate=1.0, fail_status=400)

    error = await failure_of(session, worker, wire_format)

    assert (error.kind, error.is_server_fault) == ("client", False)
    assert error.message.startswith("fake-worker rejected the request (HTTP 400)")


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("wire_format", FORMATS)
async def test_http_401_and_403_are_auth_failures(session, worker, fake, wire_format, status):
    fake.configure(failure_rate=1.0, fail_status=status)

    error = await failure_of(session, worker, wire_format)

    assert (error.kind, error.status) == ("auth", status)
    assert error.message.startswith(f"fake-worker refused our credentials (HTTP {status})")


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_malformed_answer_is_reported_as_garbage_from_the_worker(session, worker, fake, wire_format):
    fake.configure(malformed=True)

    error = await failure_of(session, worker, wire_format)

    assert error.kind == "server"
    assert error.message.startswith("malformed answer from fake-worker: ")


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_answer_past_the_byte_cap_is_cut_off(session, worker, fake, wire_format):
    fake.configure(oversized_bytes=4 * 1024 * 1024)

    error = await failure_of(session, worker, wire_format, limits=CallLimits(max_answer_bytes=256 * 1024))

    assert error.kind == "server"
    assert error.message == "fake-worker sent an answer larger than 262144 bytes"


@pytest.mark.parametrize("wire_format", ["predict", "a1111"])
async def test_announced_length_past_the_byte_cap_is_refused_unread(session, worker, wire_format):
    error = await failure_of(session, worker, wire_format, limits=CallLimits(max_answer_bytes=10))

    assert error.message == "fake-worker sent an answer larger than 10 bytes"


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_refused_connection_is_the_servers_fault(session, closed_port_url, wire_format):
    worker = FakeWorker(name="gone-worker", base_url=closed_port_url)

    error = await failure_of(session, worker, wire_format)

    assert error.kind == "server"
    assert error.message.startswith(f"could not connect to gone-worker at {closed_port_url}: ")


@pytest.mark.parametrize("wire_format", FORMATS)
async def test_connection_dropped_before_answering_is_the_servers_fault(session, worker, fake, wire_format):
    fake.configure(reset=True)

    error = await failure_of(session, worker, wire_format)

    assert error.kind == "server"
    assert "fake-worker closed the connection" in error.message


async def test_openai_sends_the_api_key_as_a_bearer_token(session, fake):
    fake.configure(api_key="sekrit")
    keyed = FakeWorker(name="keyed", base_url=fake.url, api_key="sekrit")
    wrong = FakeWorker(name="wrong-key", base_url=fake.url, api_key="guess")

    answer = await ask(session, keyed, "openai", prompt="hi")
    error = await failure_of(session, wrong, "openai")

    assert answer.result == "echo: hi"
    assert error.kind == "auth"
    assert "invalid api key" in error.message


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize("wire_format", list(PROBED_FORMATS))
async def test_probe_returns_the_status_of_the_formats_health_route(session, worker, fake, wire_format, status):
    fake.configure(health_status=status)
    fake.reset_stats()

    assert await client_for(wire_format).probe(session, worker, timeout=1.0) == status
    assert fake.stats()["requests"] == {PROBED_FORMATS[wire_format]: 1}


async def test_a1111_probe_is_none_even_when_nothing_listens(session, closed_port_url):
    worker = FakeWorker(name="imagine-1", base_url=closed_port_url)

    assert await client_for("a1111").probe(session, worker, timeout=1.0) is None


@pytest.mark.parametrize("wire_format", list(PROBED_FORMATS))
async def test_probe_of_a_closed_port_raises_rather_than_returning_a_status(session, closed_port_url, wire_format):
    worker = FakeWorker(name="gone-worker", base_url=closed_port_url)

    with pytest.raises(ModelServerError) as caught:
        await client_for(wire_format).probe(session, worker, timeout=1.0)

    assert caught.value.kind == "server"


def test_unknown_wire_format_is_a_value_error():
    with pytest.raises(ValueError, match="unknown wire format 'grpc'"):
        client_for("grpc")


async def test_fake_server_knobs_flip_over_http_while_it_runs(session, worker, fake):
    async with session.post(f"{fake.url}/_fake/config", data=orjson.dumps({"failure_rate": 1.0, "fail_status": 503})):
        pass
    async with session.get(f"{fake.url}/_fake/config") as response:
        config = orjson.loads(await response.read())

    error = await failure_of(session, worker, "predict")

    assert (config["failure_rate"], config["fail_status"]) == (1.0, 503)
    assert error.status == 503


async def test_fake_server_refuses_an_unknown_knob(session, fake):
    async with session.post(f"{fake.url}/_fake/config", data=orjson.dumps({"speed": 11})) as response:
        body = orjson.loads(await response.read())

    assert response.status == 400
    assert "unknown knob 'speed'" in body["error"]


async def test_fake_server_failure_draw_repeats_for_the_same_seed(session, worker, fake):
    async def outcomes():
        fake.configure(failure_rate=0.5, seed=42)
        kinds = []
        for _ in range(12):
            try:
                await ask(session, worker, "predict")
                kinds.append("ok")
            except ModelServerError as error:
                kinds.append(error.kind)
        return kinds

    first = await outcomes()

    assert first == await outcomes()
    assert set(first) == {"ok", "server"}


async def test_fake_server_counts_requests_held_in_flight_at_once(session, worker, fake):
    fake.configure(delay=0.2)
    fake.reset_stats()

    await asyncio.gather(*(ask(session, worker, "ollama") for _ in range(20)))

    assert fake.stats() == {"requests": {"/api/chat": 20}, "in_flight": 0, "peak_in_flight": 20}
