"""Fixtures for the pools tests: more fake model servers, and two real RQ worker processes."""
import subprocess
import sys
import time

import pytest
from rq import Worker as RQWorker

from conftest import PROJECT_DIR, worker_environment


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


def one_job_at_a_time() -> list[str]:
    """Return the run_realm_worker arguments that make a worker run one job at a time."""
    from realms.management.commands.run_realm_worker import Command

    parser = Command().create_parser("manage.py", "run_realm_worker")
    return ["--concurrency", "1"] if "--concurrency" in parser._option_string_actions else []


@pytest.fixture
def two_rq_workers(transactional_db, default_realms, clean_redis):
    """Two real RQ worker processes, each running one job at a time, serving every realm."""
    processes = []
    for count in (1, 2):
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_realm_worker", "--name", f"pools-test-{count}", *one_job_at_a_time()],
            cwd=PROJECT_DIR,
            env=worker_environment(),
        )
        processes.append(process)
        deadline = time.monotonic() + 20
        while len(RQWorker.all(connection=clean_redis)) < count:
            if process.poll() is not None or time.monotonic() > deadline:
                for started in processes:
                    started.kill()
                pytest.fail("an RQ worker did not start")
            time.sleep(0.05)
    yield processes
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
