"""The chaos run's own Postgres cluster and Redis server, on spare loopback ports, which it
may stop and start at will: never the machine's shared 5432 and 6379."""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import redis

# Postgres refuses to run as root; a root run hands the cluster to this system account.
POSTGRES_ACCOUNT = "postgres"
READY_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path:
    """Return the bin directory of the newest Postgres installed from Debian's packages."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(Path(path).parts[-3]))
    if not found:
        raise RuntimeError("no Postgres server binaries under /usr/lib/postgresql/*/bin (Debian package postgresql)")
    return Path(found[-1]).parent


def wait_until(is_ready, what: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not is_ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was not ready within {timeout:.0f} s")
        time.sleep(0.1)


class OwnPostgres:
    """A throwaway Postgres cluster: initdb into a temporary directory, served on a spare port.

    Durability is switched off (fsync, synchronous commit): the cluster is restarted, never
    crashed with its host, and a run must not wait on the disk of a loaded machine.
    """

    def __init__(self):
        self.bin = postgres_bin()
        self.port = free_port()
        self.is_root = os.geteuid() == 0
        # Its own directory under /tmp, so the postgres account can reach it whatever the caller's.
        self.directory = Path(tempfile.mkdtemp(prefix="rentahal-chaos-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        if self.is_root:
            account = pwd.getpwnam(POSTGRES_ACCOUNT)
            os.chown(self.directory, account.pw_uid, account.pw_gid)

    def run(self, program: str, *args: str) -> None:
        argv = [str(self.bin / program), *args]
        if self.is_root:
            argv = ["runuser", "-u", POSTGRES_ACCOUNT, "--", *argv]
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    def start(self) -> None:
        options = " ".join([
            f"-p {self.port}", f"-k {self.directory}", "-c listen_addresses=127.0.0.1", "-c max_connections=400",
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
        ])
        self.run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")
        wait_until(self.is_up, "Postgres")

    def stop(self) -> None:
        """Stop as an operator's restart does: open connections are cut, new ones refused."""
        self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def is_up(self) -> bool:
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def create_databases(self, names: list[str]) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            for name in names:
                connection.execute(f'CREATE DATABASE "{name}"')

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(self.directory, ignore_errors=True)


class OwnRedis:
    """A redis-server without persistence: a restart loses every queue, job and pushed map
    token, as a Redis that crashed or was flushed does."""

    def __init__(self, directory: Path):
        self.port = free_port()
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=open(self.directory / "redis.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(self.is_up, "Redis")

    def is_up(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
