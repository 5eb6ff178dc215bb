"""Fixtures for realm tests: RQ worker processes for chosen realms, a slow fake model server,
and a Prometheus multiprocess directory shared with the worker processes."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import PROJECT_DIR, worker_environment
from rentahal.queues import get_queue


@pytest.fixture
def metrics_dir(tmp_path, monkeypatch):
    """Make worker processes started afterwards write their counters where /metrics reads them."""
    path = tmp_path / "prometheus"
    path.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    return path


@pytest.fixture
def realm_worker(transactional_db, default_realms, clean_redis):
    """Start `manage.py run_realm_worker` for the given realms; all are stopped after the test."""
    from rq import Worker as RQWorker

    started: list[subprocess.Popen] = []

    def start(*realm_names: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_realm_worker", *realm_names],
            cwd=PROJECT_DIR,
            env=worker_environment(),
            start_new_session=True,
        )
        started.append(process)
        queue = get_queue("realm." + realm_names[0].lstrip("$").lower())
        deadline = time.monotonic() + 20
        while not RQWorker.all(queue=queue):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the RQ worker for {', '.join(realm_names)} did not start")
            time.sleep(0.05)
        return process

    yield start
    # Each worker leads its own process group, so RQ's scheduler child goes with it.
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def slow_server():
    """A second fake model server that waits before every answer."""
    from pools.fake_server import run_in_thread

    handle = run_in_thread(delay=1.5)
    yield handle
    handle.stop()
