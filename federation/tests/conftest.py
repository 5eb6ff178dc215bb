"""Three live brokers for federation tests: `a` is this test run's own broker (its databases
and Redis db, daphne and a realm worker as child processes), `b` and `c` each have their own
database (made from a migrated template), their own db of a Redis server started for them,
and their own daphne. Names derive from RENTAHAL_TEST_SLOT so parallel runs never collide."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connections
from psycopg import sql

from conftest import PROJECT_DIR, start_rq_worker, stop_rq_worker, worker_environment
from federation.testing import new_key_b64

SLOT = int(os.environ.get("RENTAHAL_TEST_SLOT", "0"))
# Long enough for a peer's stream on a loaded machine; a killed peer is seen at once anyway.
READ_TIMEOUT = "20"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def admin_url(name: str = "postgres") -> str:
    db = connections["default"].settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{name}"


def recreate_database(name: str, template: str | None = None) -> None:
    with psycopg.connect(admin_url(), autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        connection.execute(statement)


def drop_database(name: str) -> None:
    with psycopg.connect(admin_url(), autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def peer_redis():
    """A Redis server of the federation tests' own, on a free port: brokers b and c use its db 1 and 2."""
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("the peers' redis-server did not start")
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def peer_template(django_db_setup, django_db_blocker):
    """A migrated database that each test's b and c are copied from."""
    name = f"test_rentahal_{SLOT}_fed_template"
    with django_db_blocker.unblock():
        recreate_database(name)
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "rentahal.settings", "DATABASE_URL": admin_url(name), "SHARD_URLS": ""}
        subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=PROJECT_DIR, env=env, check=True)
    yield name
    with django_db_blocker.unblock():
        drop_database(name)


@dataclasses.dataclass
class Broker:
    letter: str
    federation_id: str
    port: int
    env: dict
    database: str | None = None  # b and c: their own database; a uses the test run's
    processes: list = dataclasses.field(default_factory=list)
    web: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sql(self, query: str, params=()) -> list[tuple]:
        """Run SQL on this broker's database (b and c; a is the test run's, read it with the ORM)."""
        with psycopg.connect(admin_url(self.database), autocommit=True) as connection:
            cursor = connection.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=self.env, capture_output=True, text=True, check=check
        )

    def add_worker(self, server, *, name: str, query_type: str = "chat", max_concurrency: int = 4) -> None:
        """Register a model server on b or c before it starts (their snapshot is read on first use)."""
        self.sql(
            "INSERT INTO pools_worker (name, address, query_type, wire_format, model, api_key, realm, is_blacklisted, "
            "max_concurrency, price, created_at) VALUES (%s, %s, %s, 'openai', 'fake-model', '', '', false, %s, 0, now())",
            (name, server.url, query_type, max_concurrency),
        )

    def start(self) -> Broker:
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "rentahal.asgi:application"],
            cwd=PROJECT_DIR, env=self.env, start_new_session=True,
        )
        self.processes.append(daphne)
        self.web = daphne
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url + "/.well-known/rentahal/federation", timeout=2):
                    return self
            except OSError:
                if daphne.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"broker {self.letter} did not come up")
                time.sleep(0.2)

    def kill(self) -> None:
        """Kill the broker's web process at once, as a crash would."""
        os.killpg(self.web.pid, signal.SIGKILL)
        self.web.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def identity_env(federation_id: str, port: int, key: str, **extra) -> dict:
    return {
        "FEDERATION_ID": federation_id,
        "FEDERATION_BASE_URL": f"http://127.0.0.1:{port}",
        "FEDERATION_PRIVATE_KEY": key,
        "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",
        "MODEL_READ_TIMEOUT": READ_TIMEOUT,
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@pytest.fixture
def brokers(transactional_db, default_realms, peer_redis, peer_template, clean_redis, django_db_blocker, monkeypatch):
    """Start brokers on demand: `brokers("a")` is this run's own, `brokers("b", max_hops=2)` a peer
    with its own database and Redis db. Everything started is stopped after the test."""
    started: list[Broker] = []

    def start(letter: str, *, workers=(), max_hops: int = 1) -> Broker:
        port = free_port()
        federation_id = f"test-{SLOT}-{letter}"
        extra = {"FEDERATION_MAX_HOPS": str(max_hops)}
        if letter == "a":
            env = {**worker_environment(), **identity_env(federation_id, port, settings.RENTAHAL_FEDERATION_PRIVATE_KEY, **extra)}
            broker = Broker(letter, federation_id, port, env)
            # The realm worker calls the peers: it needs the same identity and limits.
            for name in ("FEDERATION_BASE_URL", "FEDERATION_MAX_HOPS", "MODEL_READ_TIMEOUT", "OUTBOUND_ALLOWED_NETWORKS"):
                monkeypatch.setenv(name, env[name])
            broker.processes.append(start_rq_worker(clean_redis, "--concurrency", "8"))
            started.append(broker)
            return broker.start()
        database = f"test_rentahal_{SLOT}_fed_{letter}"
        redis_url = f"{peer_redis}/{' bc'.index(letter)}"
        with django_db_blocker.unblock():
            recreate_database(database, template=peer_template)
        redis.Redis.from_url(redis_url).flushdb()
        env = {
            **os.environ,
            **identity_env(federation_id, port, new_key_b64(), **extra),
            "DJANGO_SETTINGS_MODULE": "rentahal.settings",
            "DATABASE_URL": admin_url(database),
            "SHARD_URLS": "",
            "REDIS_URL": redis_url,
            "CHANNEL_PREFIX": f"rentahal-test-{SLOT}-{letter}",
        }
        broker = Broker(letter, federation_id, port, env, database=database)
        for name, server in workers:
            broker.add_worker(server, name=name)
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()
    with django_db_blocker.unblock():
        for broker in started:
            if broker.database:
                drop_database(broker.database)
