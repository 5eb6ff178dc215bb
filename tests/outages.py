"""Store outages for tests, caused for real: a redis-server of the test's own that is stopped
and started again on its port, and the test databases shut to every connection, as a
Postgres restart does (new connections refused, open ones dropped)."""
import asyncio
import contextlib
import socket
import subprocess
import time

import psycopg
import pytest
import redis
from asgiref.sync import SyncToAsync
from django.db import connections

from realms import chunks
from rentahal import queues, sharding


class RestartableRedis:
    """A redis-server of the test's own, without persistence, that can be stopped and started on its port."""

    def __init__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def forget_redis_clients() -> None:
    """Drop the clients this process keeps of Redis, so the next use connects to REDIS_URL as it is now."""
    queues.client_for_url.cache_clear()
    queues.get_queue.cache_clear()
    chunks._clients.clear()
    sharding._redis_client = None


@pytest.fixture
def own_redis(settings, default_realms):
    """Point REDIS_URL, the RQ queues and the channel layer at a redis-server of this test's own."""
    server = RestartableRedis()
    server.start()
    layer = settings.CHANNEL_LAYERS["default"]
    settings.CHANNEL_LAYERS = {
        "default": {**layer, "CONFIG": {**layer["CONFIG"], "hosts": [{"address": server.url, "max_connections": 1000}]}}
    }
    settings.REDIS_URL = server.url
    settings.RQ_QUEUES = {name: {**queue, "URL": server.url} for name, queue in settings.RQ_QUEUES.items()}
    forget_redis_clients()
    yield server
    server.stop()
    forget_redis_clients()


def set_test_databases_reachable(is_reachable: bool, *, application_name: str | None = None) -> None:
    """Open or shut every test database, as a Postgres restart does: shut, each refuses new
    connections and its open ones are dropped, those of `application_name` only when given
    (a realm worker's, while the test keeps its own for its teardown)."""
    names = [connection.settings_dict["NAME"] for connection in connections.all()]
    db = connections["default"].settings_dict
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"] or None, dbname="postgres",
        autocommit=True,
    ) as admin:
        for name in names:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if is_reachable else "false"}')
        if not is_reachable:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ANY(%s)"
                " AND (%s::text IS NULL OR application_name = %s)",
                [names, application_name, application_name],
            )


@contextlib.contextmanager
def databases_shut():
    """Shut every test database to everyone, this process's connections included, for the
    block; after it, the connections the outage broke are replaced."""
    set_test_databases_reachable(False)
    try:
        yield
    finally:
        set_test_databases_reachable(True)
        close_connections_everywhere()


def close_connections() -> None:
    for connection in connections.all(initialized_only=True):
        connection.close()


def close_connections_everywhere() -> None:
    """Close this thread's connections (unless it runs an async test's loop, which may not
    touch them; the `postgres_down` fixture closes them after the test) and those of
    asgiref's one thread for sync code, where an async test's `sync_to_async` calls and
    consumers run: Django's connections are per thread, and one the outage dropped would
    fail every later test that reads through it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        close_connections()  # an async test's loop may not touch its thread's connections
    SyncToAsync.single_thread_executor.submit(close_connections).result()


@pytest.fixture
def postgres_down(transactional_db):
    """Return `databases_shut`; after the test, every connection the outage broke is replaced
    before the databases are flushed."""
    yield databases_shut
    close_connections_everywhere()
