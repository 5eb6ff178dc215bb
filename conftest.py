"""Fixtures shared by every test: real Redis flushed per test, personas, fake model servers,
a real RQ worker process, and WebSocket clients for /ws."""
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.db import connections

from accounts.models import User
from pools.models import Worker
from realms.defaults import ensure_default_realms
from realms.models import Realm

PROJECT_DIR = Path(__file__).resolve().parent
DATABASE_FIXTURES = {"db", "transactional_db", "django_db_reset_sequences", "django_db_serialized_rollback"}


def pytest_collection_modifyitems(items):
    """Let every database test reach every shard: the suite runs sharded (tests/settings.py).

    A test's own `databases=` wins; otherwise its django_db marker (or bare db fixture) is
    given `databases="__all__"`, as STYLE.md asks, so a test never has to know the shards.
    """
    for item in items:
        marker = item.get_closest_marker("django_db")
        if marker is not None and "databases" in marker.kwargs:
            continue
        if marker is None and not DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
            continue
        kwargs = dict(marker.kwargs) if marker is not None else {}
        args = marker.args if marker is not None else ()
        item.add_marker(pytest.mark.django_db(*args, databases="__all__", **kwargs), append=False)


@pytest.fixture(autouse=True)
def clean_redis():
    """Flush the tests' own Redis database around each test, as RQ's RQTestCase does."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_commands(clean_redis):
    """Return a context manager that lists the command names the tests' Redis db receives
    while it is open, as MONITOR shows them (commands run by scripts are left out).

    A marker ECHO on the same db closes the recording, so every command sent before it is in.
    """
    db = clean_redis.connection_pool.connection_kwargs.get("db", 0)

    @contextlib.contextmanager
    def recording():
        commands: list[str] = []
        # Its own client: the monitor holds a connection, and ECHO must not open (and SELECT
        # on) a new one inside the recording.
        with redis.Redis.from_url(settings.REDIS_URL).monitor() as monitor:
            yield commands
            marker = uuid.uuid4().hex
            clean_redis.echo(marker)
            while True:
                seen = monitor.next_command()
                if seen["db"] != db or seen["client_type"] == "lua":
                    continue
                if seen["command"] == f"ECHO {marker}":
                    break
                commands.append(seen["command"].split(" ", 1)[0].upper())

    return recording


@pytest.fixture
def default_realms(db):
    """The default realms; transactional tests truncate what the data migration made."""
    ensure_default_realms(Realm)
    return {realm.query_type: realm for realm in Realm.objects.all()}


def make_user(nickname: str, **fields) -> User:
    guid = str(uuid.uuid4())
    from rentahal.sharding import shard_for_guid

    return User.objects.using(shard_for_guid(guid)).create(guid=guid, nickname=nickname, **fields)


@pytest.fixture
def sysop(db):
    return make_user("sysop", is_sysop=True)


@pytest.fixture
def alice(db):
    return make_user("alice")


@pytest.fixture
def bob(db):
    return make_user("bob")


@pytest.fixture
def peer(db):
    """Another broker, active here: its row, its key, and requests signed as it."""
    from federation.testing import make_peer

    return make_peer("peer-b")


@pytest.fixture
def banned_user(db):
    return make_user("mallory", is_banned=True)


def make_staff(username: str, *permissions: str, **fields):
    """Return a Django staff login holding the named permissions ("realms.add_realm")."""
    from django.contrib.auth.models import Permission
    from django.contrib.auth.models import User as StaffUser

    staff = StaffUser.objects.create_user(username, password="pw", is_staff=True, **fields)
    for name in permissions:
        app_label, codename = name.split(".")
        staff.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return staff


# What an operator who runs pools and realms (but is no superuser) is granted.
OPERATOR_PERMISSIONS = tuple(
    f"{app}.{verb}_{model}"
    for app, model in (("pools", "poolalias"), ("pools", "worker"), ("realms", "realm"))
    for verb in ("view", "add", "change", "delete")
)


@pytest.fixture
def operator(db):
    """A staff login with the model permissions of pools, workers and realms, and nothing else."""
    return make_staff("operator", *OPERATOR_PERMISSIONS)


@pytest.fixture
def fake_server():
    """A fake model server on a loopback port, speaking every wire format."""
    from pools.testing.fake_server import run_in_thread

    handle = run_in_thread()
    yield handle
    handle.stop()


@pytest.fixture
def fake_servers():
    """Start fake model servers on demand (each on its own loopback port); all stop after the test."""
    from pools.testing.fake_server import run_in_thread

    started = []

    def start(**knobs):
        handle = run_in_thread(**knobs)
        started.append(handle)
        return handle

    yield start
    for handle in started:
        handle.stop()


@pytest.fixture(scope="session")
def speech_to_text_url():
    """`manage.py serve_speech_to_text` (Whisper tiny.en) on a free port, for the whole run."""
    from pools.testing.speech_servers import running

    with running("serve_speech_to_text") as url:
        yield url


@pytest.fixture(scope="session")
def text_to_speech_url():
    """`manage.py serve_text_to_speech` (Piper's joe voice) on a free port, for the whole run."""
    from pools.testing.speech_servers import running

    with running("serve_text_to_speech") as url:
        yield url


@pytest.fixture
def register_worker(db):
    """Register a worker that talks to the fake server in the given wire format; `health_score`
    puts its runtime health where the health rules would have brought it (0 blacklists it)."""
    from pools import state
    from pools.selection import MAX_HEALTH

    def register(server, wire_format="openai", query_type="chat", name=None, health_score=None, **fields) -> Worker:
        worker = Worker.objects.create(
            name=name or f"{wire_format}-{query_type}-{uuid.uuid4().hex[:6]}",
            address=server.url,
            query_type=query_type,
            wire_format=wire_format,
            model=fields.pop("model", "fake-model"),
            **fields,
        )
        if health_score is not None:
            state.change_health(worker.name, health_score - MAX_HEALTH)
        return worker

    return register


def database_url(alias: str) -> str:
    db = connections[alias].settings_dict
    return f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def worker_environment() -> dict:
    """Environment for a child process that must see this test run's databases and Redis."""
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url("default"),
        SHARD_URLS=",".join(database_url(alias) for alias in settings.DATABASES if alias.startswith("shard")),
        REDIS_URL=settings.REDIS_URL,
        CHANNEL_PREFIX=settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
        TEST_CONN_MAX_AGE="60",
    )
    return env


WORKER_KINDS = {
    # RQ's stock worker, one job at a time.
    "simple": ["--concurrency", "1"],
    # rentahal.worker.ConcurrentWorker, many jobs in flight on one event loop.
    "concurrent": ["--concurrency", "16", "--shutdown-grace", "5"],
}


def start_rq_worker(connection, *arguments: str) -> subprocess.Popen:
    """Start `manage.py run_realm_worker` with `arguments` and wait until RQ lists one more worker.

    The worker leads its own process group, so `stop_rq_worker` takes any child it forked
    (RQ's scheduler) down with it.
    """
    from rq import Worker as RQWorker

    already = RQWorker.count(connection=connection)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_realm_worker", *arguments],
        cwd=PROJECT_DIR,
        env=worker_environment(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while RQWorker.count(connection=connection) <= already:
        if process.poll() is not None or time.monotonic() > deadline:
            stop_rq_worker(process, timeout=0)
            pytest.fail(f"the RQ worker ({' '.join(arguments)}) did not start")
        time.sleep(0.05)
    return process


def stop_rq_worker(process: subprocess.Popen, timeout: float = 10) -> None:
    """Ask the worker to shut down warm; kill its whole process group if it does not in time."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture
def start_worker(transactional_db, default_realms, clean_redis):
    """Start RQ worker processes with the given `run_realm_worker` arguments; all stop after the test."""
    started: list[subprocess.Popen] = []

    def start(*arguments: str) -> subprocess.Popen:
        started.append(start_rq_worker(clean_redis, *arguments))
        return started[-1]

    yield start
    for process in started:
        stop_rq_worker(process)


@pytest.fixture(params=list(WORKER_KINDS))
def rq_worker(request, start_worker):
    """A real RQ worker process of each kind serving every realm's queue, stopped after the test."""
    return start_worker(*WORKER_KINDS[request.param])


class Client:
    """A WebSocket client of /ws that keeps the frames it has read."""

    def __init__(self, communicator: WebsocketCommunicator):
        self.communicator = communicator
        self.frames: list[dict] = []

    async def send(self, frame: dict) -> None:
        await self.communicator.send_json_to(frame)

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 5) -> dict:
        frame = await self.communicator.receive_json_from(timeout=timeout)
        self.frames.append(frame)
        return frame

    async def receive_until(self, frame_type: str, timeout: float = 15) -> list[dict]:
        """Return the frames read up to and including the first of `frame_type`."""
        start = len(self.frames)
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.receive(timeout=max(0.01, deadline - time.monotonic()))
            if frame["type"] == frame_type:
                return self.frames[start:]

    async def receive_acknowledgement(self, timeout: float = 15) -> dict:
        """Return the answer to the submit just sent: the first `queue_update` naming a query
        no earlier frame named (a waiting query's place is pushed again as it moves), or an
        `error`."""
        known = {frame.get("query_id") for frame in self.frames}
        deadline = time.monotonic() + timeout
        while True:
            frame = await self.receive(timeout=max(0.01, deadline - time.monotonic()))
            if frame["type"] == "error" or frame["type"] == "queue_update" and frame["query_id"] not in known:
                return frame

    async def close(self) -> None:
        await self.communicator.disconnect()


@pytest.fixture
async def connect():
    """Open /ws connections, optionally as a known user; all are closed after the test."""
    from rentahal.asgi import application

    opened: list[Client] = []

    async def open_socket(guid: str | None = None, *, greeting: bool = True) -> Client:
        headers = [(b"cookie", f"user_guid={guid}".encode())] if guid else []
        communicator = WebsocketCommunicator(application, "/ws", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        client = Client(communicator)
        opened.append(client)
        if greeting:
            await client.receive_until("huggingface_update")
        return client

    yield open_socket
    for client in opened:
        await client.close()


@pytest.fixture
async def subscribe():
    """Join a channel to an event group (as a dashboard or agent tool would); return a
    function that waits for the channel's next event. Every channel leaves its group after."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    joined: list[tuple[str, str]] = []

    async def join(group: str):
        channel = await layer.new_channel()
        await layer.group_add(group, channel)
        joined.append((group, channel))

        async def next_event() -> dict:
            return await asyncio.wait_for(layer.receive(channel), timeout=5)

        return next_event

    yield join
    for group, channel in joined:
        await layer.group_discard(group, channel)
