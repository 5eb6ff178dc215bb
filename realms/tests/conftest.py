"""Fixtures for realm tests: a slow fake model server, and a Prometheus multiprocess directory
shared with the worker processes."""
import pytest


@pytest.fixture
def metrics_dir(tmp_path, monkeypatch):
    """Make worker processes started afterwards write their counters where /metrics reads them."""
    path = tmp_path / "prometheus"
    path.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    return path


@pytest.fixture
def slow_server():
    """A second fake model server that waits before every answer."""
    from pools.testing.fake_server import run_in_thread

    handle = run_in_thread(delay=1.5)
    yield handle
    handle.stop()
