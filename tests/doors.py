"""Helpers for tests of the HTTP doors: daphne processes serving the broker on free ports."""
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import PROJECT_DIR, worker_environment


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_daphne() -> tuple[subprocess.Popen, str]:
    """Start a daphne web process on a free port; return it and its base URL once /health answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "rentahal.asgi:application"],
        cwd=PROJECT_DIR,
        env=worker_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1):
                return process, base
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("daphne did not come up")
            time.sleep(0.1)


def stop_daphne(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(autouse=True)
async def close_async_connections():
    """Close the connection Django opened on sync_to_async's thread for an async test's
    queries, so the test databases can be dropped at the end of the run."""
    from asgiref.sync import sync_to_async
    from django.db import connections

    yield
    await sync_to_async(connections.close_all)()
