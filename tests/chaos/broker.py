"""The broker's processes for a chaos run, started as `run_broker` starts them (its
`realm_workers`, `daphne_command` and `manage`) but against the run's own stores, with the
fake model server as the model servers, and supervised here so a fault can kill any of them."""
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from django.conf import settings

from pools import actions as pools
from realms.management.commands.run_broker import daphne_command, manage, realm_workers
from tests.chaos.stores import free_port, wait_until

CHAT_POOL = "$CHAT"
# Seconds a supervised process that died waits before it is started again (run_broker's backoff).
RESTART_PAUSE_SECONDS = 1.0


class Process:
    """A child in its own process group, logging to a file of the run; `kill` is a crash."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, restart_argv=None):
        self.name = name
        self.argv = argv
        # Returns the command line of a restart, where it differs from the first (a realm
        # worker's fresh RQ name: RQ refuses the name a killed worker's key still holds).
        self.restart_argv = restart_argv
        self.env = env
        self.log = log
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.died_at: float | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=settings.BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process itself (not its group), as the OOM killer or a crash would."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def restart_if_dead(self) -> bool:
        if self.is_alive():
            self.died_at = None
            return False
        now = time.monotonic()
        if self.died_at is None:
            self.died_at = now
        if now - self.died_at < RESTART_PAUSE_SECONDS:
            return False
        self.died_at = None
        self.restarts += 1
        if self.restart_argv is not None:
            self.argv = self.restart_argv()
        self.start()
        return True

    def stop(self) -> None:
        """Stop the whole group: a killed realm worker may have left its RQ scheduler behind."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Broker:
    """Fake model servers, one realm worker per realm, the reconciler and daphne."""

    def __init__(self, env: dict[str, str], run_dir: Path, *, seed: int):
        self.env = env
        self.run_dir = run_dir
        self.seed = seed
        self.port = free_port()
        self.processes: list[Process] = []
        self.model_servers: list[Process] = []
        self.realm_workers: dict[str, Process] = {}

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def add(self, name: str, argv: list[str], restart_argv=None) -> Process:
        slug = "".join(char if char.isalnum() else "-" for char in name).strip("-")
        process = Process(name, argv, self.env, self.run_dir / f"{slug}.log", restart_argv)
        process.start()
        self.processes.append(process)
        return process

    def start_model_servers(self) -> list[str]:
        """Start two fake model servers, a quick one and a slower one that fails one call in
        ten (the pool fails over to the quick one); return their addresses."""
        addresses = []
        for name, knobs in (
            ("model-quick", ["--delay", "0.05"]),
            ("model-flaky", ["--delay", "0.3", "--failure-rate", "0.1", "--seed", str(self.seed)]),
        ):
            port = free_port()
            self.model_servers.append(self.add(name, manage("fake_model_server", "--port", str(port), *knobs)))
            addresses.append(f"http://127.0.0.1:{port}")
        for address in addresses:
            wait_until(lambda: answers(f"{address}/v1/models"), f"the fake model server at {address}")
        return addresses

    def register_model_servers(self, addresses: list[str]) -> None:
        """Register chat workers in the $CHAT pool and a vision worker; imagine has none, so
        those queries fail with a reason (no worker), as on a broker with no image server."""
        names = []
        for index, address in enumerate(addresses):
            names.append(f"chaos-chat-{index}")
            pools.add_worker(
                name=names[-1], address=address, query_type="chat", wire_format="openai", model="fake", acting_user=None
            )
        pools.add_worker(
            name="chaos-vision", address=addresses[0], query_type="vision", wire_format="ollama", model="fake",
            acting_user=None,
        )
        pools.ensure_pool(CHAT_POOL, query_type="chat", realm=CHAT_POOL, members=names, acting_user=None)

    def start_broker(self) -> None:
        for worker in realm_workers(self.env):
            self.realm_workers[worker.realm_name] = self.add(worker.name, worker.argv, renamed_argv(worker))
        self.add("reconciler", manage("reconcile_queries", "--every", str(settings.RENTAHAL_RECONCILE_EVERY)))
        daphne = self.add("daphne", daphne_command("127.0.0.1", self.port))
        wait_until(lambda: answers(f"http://127.0.0.1:{self.port}/"), "daphne")
        if not daphne.is_alive():
            raise RuntimeError("daphne exited at start; see daphne.log in the run directory")

    def supervise(self) -> list[str]:
        """Restart every process that died; return the names of those restarted."""
        return [process.name for process in self.processes if process.restart_if_dead()]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def renamed_argv(worker):
    """Return what gives the realm worker's command line under a fresh RQ name, as run_broker restarts it."""

    def argv() -> list[str]:
        worker.rename()
        return worker.argv

    return argv


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
