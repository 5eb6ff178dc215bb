"""The broker as a newcomer runs it: `manage.py run_broker` serving the page, the admin and
/ws through daphne, with the bundled real model answering."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import orjson
import pytest
import websockets

from conftest import PROJECT_DIR, worker_environment

pytestmark = pytest.mark.django_db(transaction=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker(*extra: str, env: dict[str, str] | None = None, stdout=None) -> tuple[subprocess.Popen, int]:
    """Start `run_broker` on free ports, with `env` added to the test environment, and wait until it serves the page."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable, "manage.py", "run_broker", "--port", str(port), "--model-port", str(free_port()),
            "--speech-ports", str(free_port()), str(free_port()), *extra,
        ],
        cwd=PROJECT_DIR,
        # The bundled model answers in about a second on a quiet machine; the unit tests'
        # 3 s read timeout would fail it whenever the machine is busy.
        env={**worker_environment(), "MODEL_READ_TIMEOUT": "60", **(env or {})},
        stdout=stdout,
        text=True,
        # Its own process group, so `stop_broker` takes its children down even if it hangs.
        start_new_session=True,
    )
    # Migrating (checking) four databases, booting a dozen processes and loading the bundled
    # models together, on a loaded machine.
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_broker(process)
                pytest.fail("run_broker did not come up")
            time.sleep(0.2)


def stop_broker(process: subprocess.Popen) -> None:
    """Stop run_broker (it stops its children); kill the whole group if that takes too long."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture
def broker(transactional_db, default_realms):
    process, port = start_broker()
    yield port
    stop_broker(process)


@pytest.fixture
def broker_without_model(transactional_db, default_realms):
    process, port = start_broker("--no-local-model", "--no-speech")
    yield port
    stop_broker(process)


async def read_until(ws, frame_type: str, timeout: float = 30) -> dict:
    while True:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame["type"] == frame_type:
            return frame


async def test_newcomer_gets_a_real_answer_from_the_bundled_model(broker):
    async with websockets.connect(f"ws://127.0.0.1:{broker}/ws") as ws:
        await read_until(ws, "huggingface_update")
        await ws.send(orjson.dumps({"type": "submit_query", "query": {"prompt": "What is the capital of France?", "query_type": "chat", "model_type": "worker_node", "model_name": ""}}).decode())
        result = await read_until(ws, "query_result", timeout=60)

    assert "paris" in result["result"].lower()
    assert result["worker"] == "smollm2-local"


async def test_the_bundled_speech_models_speak_and_transcribe_through_the_broker(broker):
    async with websockets.connect(f"ws://127.0.0.1:{broker}/ws") as ws:
        await read_until(ws, "huggingface_update")
        await ws.send(orjson.dumps({"type": "text_to_speech", "text": "The capital of France is Paris."}).decode())
        spoken = await read_until(ws, "speech_result", timeout=60)
        await ws.send(orjson.dumps({"type": "speech_to_text", "audio": spoken["audio"]}).decode())
        heard = await read_until(ws, "transcription_result", timeout=60)

    assert (spoken["worker"], heard["worker"]) == ("piper-local", "whisper-local")
    assert "capital" in heard["text"].lower() and "paris" in heard["text"].lower()


def test_page_and_admin_are_served_with_their_static_files(broker_without_model):
    base = f"http://127.0.0.1:{broker_without_model}"

    with urllib.request.urlopen(f"{base}/") as page:
        assert b'src="/static/rentahal/page.js"' in page.read()
    with urllib.request.urlopen(f"{base}/static/rentahal/page.js") as script:
        assert b"new WebSocket" in script.read()
    with urllib.request.urlopen(f"{base}/admin/login/") as login:
        assert login.status == 200
    with urllib.request.urlopen(f"{base}/static/admin/css/base.css") as css:
        assert css.status == 200
    with urllib.request.urlopen(f"{base}/metrics") as metrics:
        assert metrics.status == 200


async def test_idle_socket_outlives_redis_socket_timeouts(broker_without_model):
    """redis-py 8 killed idle Channels sockets after 5 s (rentahal.W001); this one idles 7 s."""
    async with websockets.connect(f"ws://127.0.0.1:{broker_without_model}/ws") as ws:
        await read_until(ws, "huggingface_update")
        await asyncio.sleep(7)
        await ws.send('{"type": "get_previous_queries"}')

        assert (await read_until(ws, "previous_queries", timeout=5))["data"] == []


async def test_three_hundred_sockets_connecting_at_once_all_get_in(broker_without_model):
    """A reconnect storm must not exhaust the channel layer's Redis pool (rentahal.W002)."""
    url = f"ws://127.0.0.1:{broker_without_model}/ws"

    async def visit():
        async with websockets.connect(url, open_timeout=30) as ws:
            return (await read_until(ws, "user_info"))["data"]["guid"]

    guids = await asyncio.gather(*(visit() for _ in range(300)))

    assert len(set(guids)) == 300
