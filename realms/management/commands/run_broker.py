"""Run the whole broker on one machine: migrations, a real local chat model registered as a
worker, RQ realm workers, housekeeping, and daphne serving the page, /ws and the admin."""
import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg
from environ import Env
from psycopg import sql

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from rq import Worker as RQWorker

from accounts.actions.users import has_sysop, issue_sysop_claim
from pools import actions as pools
from pools import speech
from pools.local_model import MODEL_NAME
from realms.models import Realm
from realms.speech import SPEECH_TO_TEXT_POOL, TEXT_TO_SPEECH_POOL
from rentahal.errors import REDIS_OUTAGES, Invalid
from rentahal.queues import redis_connection
from rentahal.supervision import kill_group, start_in_own_group

logger = logging.getLogger(__name__)

LOCAL_WORKER_NAME = "smollm2-local"
CHAT_POOL = "$CHAT"
SPEECH_REALM = "$SPEECH"
# How long a bundled model server may take to load and answer (a busy machine loads slowly).
MODEL_STARTUP_SECONDS = 120


@dataclasses.dataclass(frozen=True)
class BundledModel:
    """A model server the local run starts, and the worker and pool it is registered as."""

    worker: str
    command: list[str]
    model: str
    query_type: str
    wire_format: str
    pool: str
    realm: str
    port: int


def bundled_models(options: dict) -> list[BundledModel]:
    """Return the bundled models to start: SmolLM2 (the `model` extra) unless --no-local-model,
    and the speech models (the `speech` extra, when installed) unless --no-speech; their pools
    are the ones the chat and speech realms read (realms.speech)."""
    models = []
    if not options["no_local_model"]:
        models.append(BundledModel(
            LOCAL_WORKER_NAME, ["serve_local_model"], MODEL_NAME, "chat", "openai", CHAT_POOL, CHAT_POOL, options["model_port"],
        ))
    if options["no_speech"]:
        return models
    transcribe_port, speak_port = options["speech_ports"]
    if speech.is_installed(speech.SPEECH_TO_TEXT_PACKAGES):
        command = ["serve_speech_to_text", "--max-seconds", str(settings.RENTAHAL_MAX_AUDIO_SECONDS)]
        models.append(BundledModel(
            "whisper-local", command, speech.TRANSCRIBE_MODEL, "speech", "openai_audio", SPEECH_TO_TEXT_POOL, SPEECH_REALM,
            transcribe_port,
        ))
    if speech.is_installed(speech.TEXT_TO_SPEECH_PACKAGES):
        models.append(BundledModel(
            "piper-local", ["serve_text_to_speech"], speech.SPEAK_MODEL, "speech", "openai_audio", TEXT_TO_SPEECH_POOL,
            SPEECH_REALM, speak_port,
        ))
    return models
# Where the local run may call model servers when the operator named no networks: its
# bundled model and a developer's own servers listen on loopback (rentahal.outbound).
LOCAL_RUN_NETWORKS = ["127.0.0.0/8", "::1/128"]
RESTART_BACKOFF_SECONDS = 2.0
# How long a realm worker may take from its start to its first RQ heartbeat: booting Django
# on a loaded machine takes seconds, far beyond a heartbeat interval.
STARTUP_GRACE_SECONDS = 120.0


class Child:
    """A supervised child process, restarted when it dies (an RQ worker may exit on a Redis failover).

    It leads its own process group and dies with the supervisor (`rentahal.supervision`),
    so neither its death nor the supervisor's leaves an orphan running.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.env = env
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, cwd=settings.BASE_DIR, env=self.env, preexec_fn=start_in_own_group(os.getpid())
        )
        self.started_at = time.monotonic()
        logger.info("started %s (pid %d)", self.name, self.process.pid)

    def restart_if_dead(self) -> None:
        if self.process.poll() is None:
            return
        logger.warning("%s exited with %s; restarting", self.name, self.process.returncode)
        # Whatever it started and left behind (RQ's scheduler) is still in its group.
        kill_group(self.process.pid)
        if time.monotonic() - self.started_at < RESTART_BACKOFF_SECONDS:
            time.sleep(RESTART_BACKOFF_SECONDS)
        self.start()

    def kill_and_restart(self, reason: str) -> None:
        logger.error("%s (pid %d) %s; killing it and starting another", self.name, self.process.pid, reason)
        kill_group(self.process.pid)
        self.process.wait()
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()

    def wait(self, timeout: float) -> None:
        if not self.process:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        kill_group(self.process.pid)
        self.process.wait()


class RealmWorker(Child):
    """A realm worker under the watchdog: alive is not enough, its RQ heartbeat must move.

    Each start gets a fresh RQ worker name (RQ refuses a name whose key a killed worker
    left behind), under which `Watchdog` reads its heartbeat.
    """

    def __init__(self, realm: Realm, env: dict[str, str]):
        super().__init__(f"realm worker {realm.name}", [], env)
        self.realm_name = realm.name
        self.slug = realm.queue_name.rsplit(".", 1)[-1]
        self.last_heartbeat: bytes | None = None
        # When the heartbeat was last seen to move, or the watch started afresh.
        self.alive_at = 0.0
        self.rename()

    def rename(self) -> None:
        self.worker_name = f"rentahal-{self.slug}-{uuid.uuid4().hex[:12]}"
        self.argv = manage("run_realm_worker", "--name", self.worker_name, self.realm_name)

    def start(self) -> None:
        if self.process is not None:
            self.rename()
        super().start()
        self.last_heartbeat = None
        self.alive_at = time.monotonic()

    def note_heartbeat(self, heartbeat: bytes | None, now: float) -> None:
        if heartbeat is not None and heartbeat != self.last_heartbeat:
            self.last_heartbeat = heartbeat
            self.alive_at = now


class Watchdog:
    """Kill and restart realm workers that live but whose RQ heartbeat stopped moving for
    `RENTAHAL_WORKER_STUCK_SECONDS` (a frozen process, an event loop blocked by a call), or
    that never sent one within `STARTUP_GRACE_SECONDS` of their start.

    Their jobs are then abandoned in RQ's started registry, and the reconciler runs them
    again (README, "Lost work is re-run"). Time counts only while Redis answers the watchdog:
    a worker cannot renew its heartbeat during a Redis outage, so each is given the full
    time again once Redis is back.
    """

    def __init__(self, workers: list[RealmWorker]):
        self.workers = workers
        self.was_reachable = True

    def look(self) -> None:
        try:
            with redis_connection().pipeline(transaction=False) as pipeline:
                for worker in self.workers:
                    pipeline.hget(f"{RQWorker.redis_worker_namespace_prefix}{worker.worker_name}", "last_heartbeat")
                heartbeats = pipeline.execute()
        except REDIS_OUTAGES as exc:
            if self.was_reachable:
                logger.warning("watchdog: Redis unavailable (%s); realm workers are not judged until it is back", exc)
            self.was_reachable = False
            return
        now = time.monotonic()
        if not self.was_reachable:
            self.was_reachable = True
            for worker in self.workers:
                worker.alive_at = now
        for worker, heartbeat in zip(self.workers, heartbeats):
            worker.note_heartbeat(heartbeat, now)
            stuck_for = now - worker.alive_at
            if worker.process.poll() is not None:
                continue
            if worker.last_heartbeat is None:
                if stuck_for > STARTUP_GRACE_SECONDS:
                    worker.kill_and_restart(f"did not register with RQ within {stuck_for:.0f} s")
            elif stuck_for > settings.RENTAHAL_WORKER_STUCK_SECONDS:
                worker.kill_and_restart(f"renewed no heartbeat for {stuck_for:.0f} s")


def fresh_metrics_dir() -> Path:
    """Return an empty directory for prometheus-client's multiprocess files.

    Files left by an earlier run would add old counts to the new run's /metrics.
    """
    path = Path(settings.BASE_DIR) / "run" / "prometheus"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def manage(*args: str) -> list[str]:
    return [sys.executable, str(settings.BASE_DIR / "manage.py"), *args]


def wait_for_http(url: str, *, timeout: float, child: Child) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise CommandError(f"{child.name} exited with {child.process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise CommandError(f"{child.name} did not answer at {url} within {timeout:.0f} s")


def server_message_limit() -> int:
    """Return the WebSocket message size daphne accepts: twice RENTAHAL_MAX_FRAME_BYTES.

    daphne's own default (1 MiB) closes the socket with 1009 before the consumer runs, so
    the broker's frame limit and its `error` frame would never be reached. Above the limit
    the consumer refuses a frame and the socket stays open; the ceiling still bounds what
    one message can make the server buffer."""
    return 2 * settings.RENTAHAL_MAX_FRAME_BYTES


def daphne_command(host: str, port: int) -> list[str]:
    limit = str(server_message_limit())
    return [
        sys.executable, "-m", "daphne", "-b", host, "-p", str(port),
        "--websocket-max-message-size", limit, "--websocket-max-frame-size", limit,
        "rentahal.asgi:application",
    ]


def create_database_if_missing(alias: str) -> None:
    """Create the configured database so a fresh machine needs no manual `createdb`."""
    db = settings.DATABASES[alias]
    params = {"host": db["HOST"] or None, "port": db["PORT"] or None, "user": db["USER"] or None, "dbname": "postgres"}
    if db["PASSWORD"]:
        params["password"] = db["PASSWORD"]
    with psycopg.connect(**params, autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]).fetchone() is None:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
            logger.info("created database %s", db["NAME"])


def realm_workers(env: dict[str, str]) -> list[RealmWorker]:
    """Return one realm worker per realm, so a backlog in one realm (a chat flood) never
    delays another's queries: each pops only its own queue. A realm created later is
    served once the broker restarts."""
    return [RealmWorker(realm, env) for realm in Realm.objects.order_by("name")]


class Command(BaseCommand):
    help = "Migrate, start a local model worker, RQ workers and daphne; stop everything on Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--model-port", type=int, default=8090)
        parser.add_argument("--no-local-model", action="store_true", help="Do not start the bundled chat model.")
        parser.add_argument("--speech-ports", type=int, nargs=2, default=[8091, 8092], metavar=("STT", "TTS"))
        parser.add_argument("--no-speech", action="store_true", help="Do not start the bundled speech models.")
        parser.add_argument("--housekeeping-every", type=float, default=30.0)

    def handle(self, *args, **options):
        if "OUTBOUND_ALLOWED_NETWORKS" not in os.environ:
            # Set before anything reads it; the children inherit it through the environment.
            settings.RENTAHAL_OUTBOUND_ALLOWED_NETWORKS = LOCAL_RUN_NETWORKS
        for alias in settings.DATABASES:
            create_database_if_missing(alias)
            call_command("migrate", database=alias, interactive=False, verbosity=0)
        self.stdout.write("databases migrated")
        children: list[Child] = []
        stopping = False
        env = {
            **os.environ,
            "PROMETHEUS_MULTIPROC_DIR": str(fresh_metrics_dir()),
            # The local run keeps the classic doors unless the operator says otherwise: the
            # first visitor becomes sysop, and this machine may scrape /metrics.
            "FIRST_VISITOR_IS_SYSOP": os.environ.get("FIRST_VISITOR_IS_SYSOP", "true"),
            "METRICS_ALLOWED_ADDRESSES": os.environ.get("METRICS_ALLOWED_ADDRESSES", "127.0.0.1,::1"),
            "OUTBOUND_ALLOWED_NETWORKS": ",".join(settings.RENTAHAL_OUTBOUND_ALLOWED_NETWORKS),
            # Peers call this broker where it listens unless the operator names a public URL.
            "FEDERATION_BASE_URL": os.environ.get("FEDERATION_BASE_URL", f"http://{options['host']}:{options['port']}"),
            # The speech models are read from their packages; nothing may be fetched from a hub.
            "HF_HUB_OFFLINE": "1",
        }
        # The federation key pair is made on first start (docs/federation.md).
        call_command("federation_keys", "create", "--if-missing", verbosity=0)

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            self.start_bundled_models(bundled_models(options), env, children)
            every = str(options["housekeeping_every"])
            workers = realm_workers(env)
            watchdog = Watchdog(workers)
            for child in [
                *workers,
                # Lost and abandoned jobs are found within seconds (README, "Lost work is re-run").
                Child("reconciler", manage("reconcile_queries", "--every", str(settings.RENTAHAL_RECONCILE_EVERY)), env),
                Child("health checker", manage("check_worker_health", "--every", every), env),
                Child("scaling advisor", manage("evaluate_scaling", "--every", every), env),
                # Advertise to peers, take their offers and learn the peers they know.
                Child("federation discovery", manage("federation_discover", "--every", every), env),
                Child("daphne", daphne_command(options["host"], options["port"]), env),
            ]:
                child.start()
                children.append(child)
            base_url = f"http://{options['host']}:{options['port']}"
            self.stdout.write(f"rentahal is up at {base_url}/ (admin at /admin/)")
            if not Env.parse_value(env["FIRST_VISITOR_IS_SYSOP"], bool) and not has_sysop():
                token, expires_at = issue_sysop_claim()
                self.stdout.write(
                    f"no sysop yet: open {base_url}/?claim={token} before {expires_at:%H:%M:%S %Z} to become sysop "
                    "(the token works once; `manage.py sysop_claim_token` issues another)"
                )
            while not stopping:
                for child in children:
                    child.restart_if_dead()
                watchdog.look()
                time.sleep(0.5)
        finally:
            for child in reversed(children):
                child.stop()
            for child in children:
                child.wait(timeout=15)
            self.stdout.write("rentahal stopped")

    def start_bundled_models(self, models: list["BundledModel"], env: dict[str, str], children: list[Child]) -> None:
        """Start every bundled model server at once (each loads its model meanwhile), then
        register each as a worker in its pool once it answers. Each joins `children` as soon
        as it runs, so a failure later still stops it."""
        started = []
        for bundled in models:
            child = Child(bundled.model, manage(*bundled.command, "--port", str(bundled.port)), env)
            child.start()
            children.append(child)
            started.append((bundled, child))
        for bundled, child in started:
            url = f"http://127.0.0.1:{bundled.port}"
            wait_for_http(f"{url}/v1/models", timeout=MODEL_STARTUP_SECONDS, child=child)
            try:
                pools.add_worker(
                    name=bundled.worker, address=url, query_type=bundled.query_type, wire_format=bundled.wire_format,
                    model=bundled.model, acting_user=None,
                )
            except Invalid as exc:
                raise CommandError(f"the bundled {bundled.model} cannot be registered: {exc.message}") from None
            pools.ensure_pool(bundled.pool, query_type=bundled.query_type, realm=bundled.realm, members=[bundled.worker], acting_user=None)
            self.stdout.write(f"{bundled.model} registered as worker {bundled.worker} in pool {bundled.pool}")
