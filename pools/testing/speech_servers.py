"""The bundled speech servers run as their commands do, on free loopback ports, for tests."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
# Loading a model takes a few seconds on a quiet machine; a loaded one, many more.
STARTUP_DEADLINE = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running(command: str, *arguments: str) -> Iterator[str]:
    """Run `manage.py <command> --port <free>` and yield its URL once it answers /health."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "manage.py", command, "--port", str(port), *arguments],
            cwd=PROJECT_DIR, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        try:
            deadline = time.monotonic() + STARTUP_DEADLINE
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    raise RuntimeError(f"{command} did not start:\n{output.read().decode(errors='replace')}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=1):
                        break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wav_to_webm(wav: bytes) -> bytes:
    """Return the WAV's sound as WebM/Opus, the container browsers' MediaRecorder makes."""
    import io

    import av

    output = io.BytesIO()
    with av.open(io.BytesIO(wav)) as source, av.open(output, "w", format="webm") as target:
        stream = target.add_stream("libopus", rate=48000)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in source.decode(audio=0):
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    target.mux(packet)
        for packet in stream.encode(None):
            target.mux(packet)
    return output.getvalue()
