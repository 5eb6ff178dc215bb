"""The realm worker and the housekeeping loops outlive a Redis or Postgres outage: they log,
back off and resume by themselves when the store is back, with no supervisor restart
(README, "Outages"). Redis is a server of the test's own, stopped and started again on its
port; Postgres is shut for real (tests.outages.databases_shut)."""
import subprocess
import sys
import threading
import time

import pytest
import redis

from accounts.actions.queries import previous_queries
from conftest import PROJECT_DIR, WORKER_KINDS, start_rq_worker, stop_rq_worker, worker_environment
from pools import actions as pools
from realms import lifecycle
from realms.frames import parse_submission
from tests.outages import databases_shut, own_redis, postgres_down  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)

SUBMISSION = {"prompt": "after the outage", "query_type": "chat", "model_type": "worker_node", "model_name": ""}
# Long enough for several rounds (and dequeues) to meet the outage.
OUTAGE_SECONDS = 5
RESUME_TIMEOUT = 40


class Housekeeper:
    """A housekeeping command running `--every 1` in its own process, its output kept line by line."""

    def __init__(self, command: str, env: dict):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", command, "--every", "1"],
            cwd=PROJECT_DIR, env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, *, after: int = 0, timeout: float = RESUME_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines[after:]):
            assert self.process.poll() is None, f"exited with {self.process.returncode}: {self.lines[-20:]}"
            assert time.monotonic() < deadline, f"no line with {text!r} after line {after}: {self.lines[-20:]}"
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def housekeeper():
    started: list[Housekeeper] = []

    def start(command: str, **env) -> Housekeeper:
        started.append(Housekeeper(command, {**worker_environment(), **env}))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def lose_a_query(redis_url: str, alice) -> None:
    """Accept a query, then lose its job as a Redis flush would."""
    lifecycle.accept_query(alice.guid, parse_submission(SUBMISSION))
    redis.Redis.from_url(redis_url).flushdb()


def nothing(redis_url: str, alice) -> None:
    """Every round of the command prints without being given work."""


@pytest.fixture
def chat_pool(fake_server, register_worker):
    worker = register_worker(fake_server, "openai", "chat")
    pools.ensure_pool("$CHAT", query_type="chat", realm="$CHAT", members=[worker.name], acting_user=None)
    return worker


# Each command, what gives a round of it something to print, and what that round prints.
COMMANDS = {
    "reconcile_queries": (lose_a_query, "requeued"),
    "check_worker_health": (nothing, "healthy"),
    "evaluate_scaling": (nothing, "$CHAT:"),
}


def outage(store: str, own_redis):
    """Return the context manager that takes `store` down for the block."""
    if store == "postgres":
        return databases_shut()

    class RedisStopped:
        def __enter__(self):
            own_redis.stop()

        def __exit__(self, *exc_info):
            own_redis.start()

    return RedisStopped()


@pytest.mark.parametrize("store", ["redis", "postgres"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_housekeeping_loop_outlives_a_store_outage_and_resumes_when_it_returns(
    own_redis, postgres_down, housekeeper, chat_pool, alice, command, store
):
    give_work, printed = COMMANDS[command]
    process = housekeeper(command, RECONCILE_AFTER_SECONDS="0")
    give_work(own_redis.url, alice)
    process.wait_for(printed)

    with outage(store, own_redis):
        time.sleep(OUTAGE_SECONDS)
        assert process.process.poll() is None, process.lines[-20:]
    seen = len(process.lines)
    give_work(own_redis.url, alice)

    process.wait_for(printed, after=seen)
    assert any("a store is unavailable" in line for line in process.lines[:seen]), "no round met the outage"


def served(alice, query_id: str) -> str:
    """Wait for the query to end; return how."""
    deadline = time.monotonic() + RESUME_TIMEOUT
    while True:
        status = next(query["status"] for query in previous_queries(alice) if query["query_id"] == query_id)
        if status in ("done", "failed") or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def test_a_realm_worker_outlives_a_redis_outage_and_serves_queries_when_it_returns(own_redis, chat_pool, alice):
    worker = start_rq_worker(redis.Redis.from_url(own_redis.url), *WORKER_KINDS["concurrent"])
    try:
        before = lifecycle.accept_query(alice.guid, parse_submission(SUBMISSION))["query_id"]
        assert served(alice, before) == "done"

        with outage("redis", own_redis):
            time.sleep(OUTAGE_SECONDS)
        after = lifecycle.accept_query(alice.guid, parse_submission(SUBMISSION))["query_id"]

        assert served(alice, after) == "done"
        assert worker.poll() is None, "the worker exited"
    finally:
        stop_rq_worker(worker)
