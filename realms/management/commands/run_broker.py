"""Run the whole broker on one machine: migrations, a real local chat model registered as a
worker, RQ realm workers, housekeeping, and daphne serving the page, /ws and the admin."""
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
from psycopg import sql

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from pools import actions as pools
from pools import speech
from pools.local_model import MODEL_NAME
from realms.models import Realm
from realms.speech import SPEECH_TO_TEXT_POOL, TEXT_TO_SPEECH_POOL
from rentahal.errors import Invalid

logger = logging.getLogger(__name__)

LOCAL_WORKER_NAME = "smollm2-local"
CHAT_POOL = "$CHAT"
SPEECH_REALM = "$SPEECH"


def speech_workers() -> list[tuple[str, list[str], str, tuple[str, ...], str]]:
    """Return the bundled speech models (the `speech` extra): worker name, command, model,
    packages, and the pool of the speech realm it joins (realms.speech)."""
    return [
        (
            "whisper-local", ["serve_speech_to_text", "--max-seconds", str(settings.RENTAHAL_MAX_AUDIO_SECONDS)],
            speech.TRANSCRIBE_MODEL, speech.SPEECH_TO_TEXT_PACKAGES, SPEECH_TO_TEXT_POOL,
        ),
        (
            "piper-local", ["serve_text_to_speech"],
            speech.SPEAK_MODEL, speech.TEXT_TO_SPEECH_PACKAGES, TEXT_TO_SPEECH_POOL,
        ),
    ]
# Where the local run may call model servers when the operator named no networks: its
# bundled model and a developer's own servers listen on loopback (rentahal.outbound).
LOCAL_RUN_NETWORKS = ["127.0.0.0/8", "::1/128"]
RESTART_BACKOFF_SECONDS = 2.0


class Child:
    """A supervised child process, restarted when it dies (an RQ worker may exit on a Redis failover)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.name = name
        self.argv = argv
        self.env = env
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, cwd=settings.BASE_DIR, env=self.env)
        self.started_at = time.monotonic()
        logger.info("started %s (pid %d)", self.name, self.process.pid)

    def restart_if_dead(self) -> None:
        if self.process.poll() is None:
            return
        logger.warning("%s exited with %s; restarting", self.name, self.process.returncode)
        if time.monotonic() - self.started_at < RESTART_BACKOFF_SECONDS:
            time.sleep(RESTART_BACKOFF_SECONDS)
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
            self.process.kill()


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


def realm_workers(env: dict[str, str]) -> list[Child]:
    """Return one realm worker per realm, so a backlog in one realm (a chat flood) never
    delays another's queries: each pops only its own queue. A realm created later is
    served once the broker restarts."""
    return [
        Child(f"realm worker {realm.name}", manage("run_realm_worker", realm.name), env)
        for realm in Realm.objects.order_by("name")
    ]


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
        }

        def stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            if not options["no_local_model"]:
                model = Child("local model", manage("serve_local_model", "--port", str(options["model_port"])), env)
                model.start()
                children.append(model)
                url = f"http://127.0.0.1:{options['model_port']}"
                wait_for_http(f"{url}/v1/models", timeout=60, child=model)
                try:
                    pools.add_worker(
                        name=LOCAL_WORKER_NAME, address=url, query_type="chat", wire_format="openai", model=MODEL_NAME,
                        acting_user=None,
                    )
                except Invalid as exc:
                    raise CommandError(f"the bundled model cannot be registered: {exc.message}") from None
                pools.ensure_pool(CHAT_POOL, query_type="chat", realm=CHAT_POOL, members=[LOCAL_WORKER_NAME], acting_user=None)
                self.stdout.write(f"local model {MODEL_NAME} registered as worker {LOCAL_WORKER_NAME} in pool {CHAT_POOL}")
            if not options["no_speech"]:
                self.start_speech_models(options["speech_ports"], env, children)
            every = str(options["housekeeping_every"])
            for child in [
                *realm_workers(env),
                # Lost and abandoned jobs are found within seconds (README, "Lost work is re-run").
                Child("reconciler", manage("reconcile_queries", "--every", str(settings.RENTAHAL_RECONCILE_EVERY)), env),
                Child("health checker", manage("check_worker_health", "--every", every), env),
                Child("scaling advisor", manage("evaluate_scaling", "--every", every), env),
                Child("daphne", daphne_command(options["host"], options["port"]), env),
            ]:
                child.start()
                children.append(child)
            self.stdout.write(f"rentahal is up at http://{options['host']}:{options['port']}/ (admin at /admin/)")
            while not stopping:
                for child in children:
                    child.restart_if_dead()
                time.sleep(0.5)
        finally:
            for child in reversed(children):
                child.stop()
            for child in children:
                child.wait(timeout=15)
            self.stdout.write("rentahal stopped")

    def start_speech_models(self, ports: list[int], env: dict[str, str], children: list[Child]) -> None:
        """Start and register each bundled speech model whose packages are installed (the
        `speech` extra), in its pool of the speech realm (`realms.speech` reads those pools);
        each joins `children` as soon as it runs, so a failure later still stops it."""
        for (name, command, model, packages, pool), port in zip(speech_workers(), ports):
            if not speech.is_installed(packages):
                self.stdout.write(f"{model} not installed ({speech.INSTALL_HINT}); {pool} has no bundled worker")
                continue
            child = Child(model, manage(*command, "--port", str(port)), {**env, "HF_HUB_OFFLINE": "1"})
            child.start()
            children.append(child)
            url = f"http://127.0.0.1:{port}"
            wait_for_http(f"{url}/v1/models", timeout=60, child=child)
            try:
                pools.add_worker(
                    name=name, address=url, query_type="speech", wire_format="openai_audio", model=model, acting_user=None
                )
            except Invalid as exc:
                raise CommandError(f"the bundled {model} cannot be registered: {exc.message}") from None
            pools.ensure_pool(pool, query_type="speech", realm=SPEECH_REALM, members=[name], acting_user=None)
            self.stdout.write(f"speech model {model} registered as worker {name} in pool {pool}")
