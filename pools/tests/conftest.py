"""Fixtures for the pools tests: more fake model servers, and two real RQ worker processes."""
import pytest


@pytest.fixture
def fake_servers():
    """Start fake model servers on demand (each on its own loopback port); all stop after the test."""
    from pools.fake_server import run_in_thread

    started = []

    def start(**knobs):
        handle = run_in_thread(**knobs)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture
def two_rq_workers(start_worker):
    """Two real RQ worker processes, each running one job at a time, serving every realm."""
    return [start_worker("--name", f"pools-test-{count}", "--concurrency", "1") for count in (1, 2)]
