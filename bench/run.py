"""Benchmark rentahal end to end on loopback, in one command: `.venv/bin/python bench/run.py [--quick]`.

Starts the fake model server, a bench database and Redis db, daphne and realm workers, and
a load generator in this process; measures a direct call against the same call through
rentahal, throughput at several client counts, in-flight capacity of one worker process,
memory of idle WebSockets and (when bench/select_bench.py exists) selection cost. Prints a
table, the machine it ran on, and a last line of JSON. See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.metadata
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import redis
from websockets.asyncio.client import connect as ws_connect

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REQUEST_TIMEOUT = 60.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    levels: tuple[int, ...]
    requests: dict[int, int]  # requests per client count
    idle_sockets: int
    in_flight_jobs: int
    in_flight_delay: float
    in_flight_concurrency: int
    worker_concurrency: int
    workers: int


FULL = Sizes(
    levels=(1, 32, 256),
    requests={1: 500, 32: 6000, 256: 8000},
    idle_sockets=10_000,
    in_flight_jobs=600,
    in_flight_delay=1.0,
    in_flight_concurrency=1000,
    worker_concurrency=256,
    workers=1,
)
QUICK = Sizes(
    levels=(1, 2, 4),
    requests={1: 10, 2: 20, 4: 20},
    idle_sockets=100,
    in_flight_jobs=20,
    in_flight_delay=0.2,
    in_flight_concurrency=20,
    worker_concurrency=16,
    workers=1,
)
TARGETS = {
    "overhead_p50_ms_at_32": 2.0,
    "overhead_p99_ms_at_32": 10.0,
    "ws_queries_per_s": 500,
    "in_flight_per_worker": 500,
    "in_flight_rss_mib": 300,
    "idle_10k_broker_gib": 2.0,
}


# -- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return 0


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and its children (the RQ scheduler, daphne has none)."""
    total = rss_bytes(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        children = []
    return total + sum(tree_rss_bytes(int(child)) for child in children)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_matching(pattern: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


class CpuMeter:
    """CPU time spent per query by each part of the run: where the per-query budget goes.

    Postgres is counted by this run's database's backends (found again at each reading, so
    connections opened during a level count from their start); Redis is the whole server,
    so other users of it on the machine count too.
    """

    def __init__(self, parts: dict[str, "callable"]):
        self.parts = parts

    @classmethod
    def for_run(cls, processes: "Processes", database: str) -> "CpuMeter":
        parts = {name: (lambda pid=process.pid: [pid]) for name, process in processes.started.items()}
        parts["postgres"] = lambda: pids_matching(f"postgres: .* {database} ")
        parts["redis"] = lambda: pids_matching("redis-server")
        parts["load generator"] = lambda: [os.getpid()]
        return cls(parts)

    def read(self) -> dict[str, dict[int, float]]:
        return {name: {pid: cpu_seconds(pid) for pid in pids()} for name, pids in self.parts.items()}

    @staticmethod
    def per_query(before: dict, after: dict, queries: int) -> dict[str, float]:
        spent = {
            name: round(sum(cpu - before[name].get(pid, 0.0) for pid, cpu in after[name].items()) * 1000 / max(1, queries), 3)
            for name in after
        }
        spent["total"] = round(sum(spent.values()), 3)
        return spent


class Processes:
    """The processes this run started; each is stopped by its own pid at the end."""

    def __init__(self, env: dict, log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "wb")
        process = subprocess.Popen(command, cwd=PROJECT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.started[name] = process
        return process

    def stop(self, name: str, timeout: float = 30) -> None:
        process = self.started.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop_all(self) -> None:
        for name in list(self.started):
            self.stop(name, timeout=10)


def manage(env: dict, *arguments: str) -> None:
    subprocess.run([sys.executable, "manage.py", *arguments], cwd=PROJECT, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# -- statistics ---------------------------------------------------------------------------


def summarise(latencies: list[float], elapsed: float, errors: int = 0) -> dict:
    # Imported here: run() puts the project on sys.path before any load is measured.
    from rentahal.metrics import percentile

    ordered = sorted(latencies)

    def milliseconds(fraction: float) -> float | None:
        value = percentile(ordered, fraction)
        return None if value is None else round(value * 1000, 3)

    return {
        "requests": len(ordered),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(ordered) / elapsed, 1) if elapsed else None,
        "p50_ms": milliseconds(0.50),
        "p95_ms": milliseconds(0.95),
        "p99_ms": milliseconds(0.99),
    }


class Budget:
    """Requests left to send, shared by the clients of one run."""

    def __init__(self, total: int):
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


# -- load -------------------------------------------------------------------------------


PROMPT = "What is the capital of France?"


async def direct_load(url: str, clients: int, total: int) -> dict:
    """Call the fake server's /predict the way the predict client does, from `clients` tasks."""
    payload = orjson.dumps({"prompt": PROMPT, "type": "chat", "model_type": "worker_node", "model_name": ""})
    budget, latencies, errors = Budget(total), [], 0

    async def client(session):
        nonlocal errors
        while budget.take():
            started = time.perf_counter()
            async with session.post(f"{url}/predict", data=payload, headers={"Content-Type": "application/json"}) as response:
                body = await response.read()
            if response.status == 200 and b"response" in body:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        warm = Budget(min(clients, 50))

        async def warmup():
            while warm.take():
                async with session.post(f"{url}/predict", data=payload, headers={"Content-Type": "application/json"}) as response:
                    await response.read()
        await asyncio.gather(*(warmup() for _ in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summarise(latencies, elapsed, errors)


async def open_socket(ws_url: str, guid: str):
    socket_ = await ws_connect(
        ws_url, additional_headers={"Cookie": f"user_guid={guid}"}, compression=None, max_size=None,
        open_timeout=120, ping_interval=None,
    )
    while True:
        frame = orjson.loads(await socket_.recv())
        if frame["type"] == "huggingface_update":
            return socket_


async def websocket_load(ws_url: str, clients: int, total: int) -> dict:
    """Each client is a user with its own socket and one query outstanding at a time."""
    submit = orjson.dumps({"type": "submit_query", "query": {
        "prompt": PROMPT, "query_type": "chat", "model_type": "worker_node", "model_name": ""}}).decode()
    sockets = []
    for start in range(0, clients, 64):
        sockets += await asyncio.gather(*(open_socket(ws_url, str(uuid.uuid4())) for _ in range(start, min(clients, start + 64))))
    budget, latencies, errors, received = Budget(total), [], 0, []

    async def client(sock):
        nonlocal errors
        while budget.take():
            started = time.perf_counter()
            await sock.send(submit)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    while True:
                        frame = orjson.loads(await sock.recv())
                        if frame["type"] == "query_result":
                            latencies.append(time.perf_counter() - started)
                            received.append(frame["query_id"])
                            break
                        if frame["type"] == "error":
                            errors += 1
                            break
            except TimeoutError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(sock) for sock in sockets))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(sock.close() for sock in sockets))
    summary = summarise(latencies, elapsed, errors)
    summary["query_ids"] = received
    return summary


async def hold_idle_sockets(ws_url: str, count: int, guids: list[str], measure) -> dict:
    """Open `count` sockets (greeting read), hold them idle, and return `measure()` taken meanwhile."""
    sockets, failed = [], 0
    batch = 200
    started = time.perf_counter()
    for start in range(0, count, batch):
        opened = await asyncio.gather(
            *(open_socket(ws_url, guids[n % len(guids)]) for n in range(start, min(count, start + batch))),
            return_exceptions=True,
        )
        for result in opened:
            if isinstance(result, BaseException):
                failed += 1
            else:
                sockets.append(result)
    connect_seconds = time.perf_counter() - started
    await asyncio.sleep(3)
    measured = measure()
    alive = sum(1 for sock in sockets if sock.state.name == "OPEN")
    for start in range(0, len(sockets), 1000):
        await asyncio.gather(*(sock.close() for sock in sockets[start:start + 1000]), return_exceptions=True)
    return {**measured, "opened": len(sockets), "failed": failed, "alive_after_idle": alive,
            "connect_seconds": round(connect_seconds, 1)}


# -- the run ------------------------------------------------------------------------------


def machine_info() -> dict:
    meminfo = Path("/proc/meminfo").read_text().split("\n")[0].split()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {}
    for package in ["django", "channels", "channels-redis", "daphne", "rq", "redis", "aiohttp", "websockets", "orjson"]:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "ram_gib": round(int(meminfo[1]) / 1024 / 1024, 1),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def fresh_database(name: str) -> None:
    """Create the bench's database anew, so every run migrates from nothing: a database left
    by an older checkout may carry migrations under names this one no longer has."""
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{name}"')


def run(args) -> dict:
    sizes = QUICK if args.quick else FULL
    hard_limit = raise_fd_limit()
    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="rentahal.settings",
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{args.database}",
        REDIS_URL=redis_url,
        CHANNEL_PREFIX=f"rentahal-bench-{args.redis_db}",
        LOG_LEVEL="WARNING",
        QUEUE_LIMIT="1000000",
        # The in-flight measurement queues all its jobs as one user. No higher: the accept
        # statement's free-slot search costs grow with the caps.
        MAX_QUERIES_PER_USER_IN_FLIGHT=str(sizes.in_flight_jobs),
        MAX_QUERIES_PER_USER_QUEUED=str(sizes.in_flight_jobs),
        DEBUG="false",
        # The fake model servers listen on loopback (rentahal.outbound refuses it by default).
        OUTBOUND_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
    )
    os.environ.update({key: env[key] for key in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "CHANNEL_PREFIX",
                                                   "LOG_LEVEL", "QUEUE_LIMIT", "MAX_QUERIES_PER_USER_IN_FLIGHT",
                                                   "MAX_QUERIES_PER_USER_QUEUED", "DEBUG",
                                                   "OUTBOUND_ALLOWED_NETWORKS")})
    fresh_database(args.database)
    manage(env, "migrate", "--no-input")
    redis_client = redis.Redis.from_url(redis_url)
    redis_client.flushdb()

    sys.path.insert(0, str(PROJECT))
    import django

    django.setup()
    from accounts.models import Charge, Query
    from pools.models import Worker
    from realms.defaults import ensure_default_realms
    from realms.models import Realm

    ensure_default_realms(Realm)
    log_dir = Path(tempfile.mkdtemp(prefix="rentahal-bench-"))
    processes = Processes(env, log_dir)
    results: dict = {"machine": machine_info(), "quick": args.quick, "logs": str(log_dir), "fd_limit": hard_limit}
    try:
        fake_port, daphne_port = free_port(), free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        ws_url = f"ws://127.0.0.1:{daphne_port}/ws"
        processes.start("fake", [sys.executable, "manage.py", "fake_model_server", "--port", str(fake_port)])
        processes.start("daphne", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(daphne_port),
                                   "rentahal.asgi:application"])
        wait_for(lambda: is_listening(fake_port), "the fake model server")
        wait_for(lambda: is_listening(daphne_port), "daphne")
        Worker.objects.create(name="bench-predict", address=fake_url, query_type="chat", wire_format="predict",
                              model="fake-model")
        start_workers(processes, sizes.workers, sizes.worker_concurrency, redis_client)

        results["direct"], results["websocket"], results["overhead"] = {}, {}, {}
        for clients in sizes.levels:
            total = sizes.requests[clients]
            direct = asyncio.run(direct_load(fake_url, clients, total))
            meter = CpuMeter.for_run(processes, args.database)
            cpu_before = meter.read()
            through = asyncio.run(websocket_load(ws_url, clients, total))
            through["cpu_ms_per_query"] = CpuMeter.per_query(cpu_before, meter.read(), through["requests"])
            query_ids = through.pop("query_ids")
            through["stored_done"] = Query.objects.filter(pk__in=query_ids, status=Query.Status.DONE).count()
            through["billed"] = Charge.objects.filter(query_id__in=query_ids).count()
            results["direct"][clients] = direct
            results["websocket"][clients] = through
            results["overhead"][clients] = overhead(direct, through)
        results["v1"] = measure_v1(daphne_port, sizes)

        for n in range(sizes.workers):
            processes.stop(f"worker{n}")
        results["in_flight"] = measure_in_flight(processes, sizes, fake_url, redis_client)

        guids = [str(uuid.uuid4()) for _ in range(100)]
        daphne_pid = processes.started["daphne"].pid
        start_workers(processes, 1, sizes.worker_concurrency, redis_client)
        broker_pids = [daphne_pid, processes.started["worker0"].pid]
        used_before = redis_client.info("memory")["used_memory"]

        def measure_broker() -> dict:
            return {
                "daphne_rss_mib": round(rss_bytes(daphne_pid) / 2**20, 1),
                "broker_rss_mib": round(sum(tree_rss_bytes(pid) for pid in broker_pids) / 2**20, 1),
                "redis_used_delta_mib": round((redis_client.info("memory")["used_memory"] - used_before) / 2**20, 1),
            }

        asyncio.run(hold_idle_sockets(ws_url, min(50, sizes.idle_sockets), guids, dict))  # create users, warm up
        baseline = measure_broker()
        idle = asyncio.run(hold_idle_sockets(ws_url, sizes.idle_sockets, guids, measure_broker))
        idle["sockets"] = sizes.idle_sockets
        idle["daphne_baseline_mib"] = baseline["daphne_rss_mib"]
        idle["kib_per_socket"] = round(
            (idle["daphne_rss_mib"] - baseline["daphne_rss_mib"]) * 1024 / max(1, idle["opened"]), 1)
        results["idle_websockets"] = idle
        results["selection"] = run_select_bench(env, args.quick)
    finally:
        processes.stop_all()
    results["targets"] = judge(results, sizes)
    return results


def start_workers(processes: Processes, count: int, concurrency: int, redis_client) -> None:
    from rq import Worker as RQWorker

    before = len(RQWorker.all(connection=redis_client))
    for n in range(count):
        processes.start(f"worker{n}", [sys.executable, "manage.py", "run_realm_worker", "--concurrency",
                                       str(concurrency), "--name", f"bench-{n}-{uuid.uuid4().hex[:6]}"])
    wait_for(lambda: len(RQWorker.all(connection=redis_client)) >= before + count, "the realm workers")


def overhead(direct: dict, through: dict) -> dict:
    def minus(key):
        if direct[key] is None or through[key] is None:
            return None
        return round(through[key] - direct[key], 3)

    return {
        "p50_ms": minus("p50_ms"),
        "p95_ms": minus("p95_ms"),
        "p99_ms": minus("p99_ms"),
        "rps_ratio": round(direct["rps"] / through["rps"], 2) if through["rps"] else None,
    }


async def v1_load(base: str, secret: str, clients: int, total: int, *, stream: bool) -> dict:
    """POST /v1/chat/completions (plain, or streamed and read to `data: [DONE]`) from `clients` tasks with one key."""
    payload = orjson.dumps({"model": "bench-predict", "stream": stream, "messages": [{"role": "user", "content": PROMPT}]})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"}
    budget, latencies, errors = Budget(total), [], 0

    async def client(session):
        nonlocal errors
        while budget.take():
            started = time.perf_counter()
            async with session.post(f"{base}/v1/chat/completions", data=payload, headers=headers) as response:
                body = await response.read()
            if response.status == 200 and (b"data: [DONE]" in body if stream else b'"choices"' in body):
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summarise(latencies, elapsed, errors)


def measure_v1(port: int, sizes: Sizes) -> dict:
    """Measure /v1, plain and streamed, at the middle client count, with a key of a fresh user."""
    from accounts.actions.keys import create_key
    from accounts.actions.users import get_or_create_user

    user = get_or_create_user(str(uuid.uuid4()))
    _, secret = create_key(user.guid, acting_user=None)
    clients = sizes.levels[len(sizes.levels) // 2]
    total = sizes.requests[clients]
    base = f"http://127.0.0.1:{port}"
    return {
        "clients": clients,
        "plain": asyncio.run(v1_load(base, secret, clients, total, stream=False)),
        "stream": asyncio.run(v1_load(base, secret, clients, total, stream=True)),
    }


def measure_in_flight(processes: Processes, sizes: Sizes, fake_url: str, redis_client) -> dict:
    """Queue jobs behind a fake server that waits, then let one worker process take them all."""
    from rq.registry import StartedJobRegistry

    from accounts.actions.queries import accept_query
    from accounts.actions.users import get_or_create_user
    from accounts.models import Query
    from realms.lifecycle import enqueue_query
    from realms.models import Realm
    from rentahal.queues import get_queue

    import urllib.request

    urllib.request.urlopen(urllib.request.Request(
        f"{fake_url}/_fake/config", data=json.dumps({"delay": sizes.in_flight_delay}).encode(), method="POST",
        headers={"Content-Type": "application/json"}), timeout=5).read()
    realm = Realm.objects.get(query_type="chat")
    user = get_or_create_user(str(uuid.uuid4()))
    ids = []
    for n in range(sizes.in_flight_jobs):
        query = accept_query(user.guid, query_type="chat", prompt=f"in flight {n}", model_type="worker_node",
                             model_name="", image="", realm=realm.name)
        enqueue_query(query, realm.queue_name)
        ids.append(query.id)
    registry = StartedJobRegistry(realm.queue_name, connection=get_queue(realm.queue_name).connection)
    concurrency = sizes.in_flight_concurrency
    process = processes.start("inflight", [sys.executable, "manage.py", "run_realm_worker", "--concurrency",
                                           str(concurrency), "--name", f"bench-inflight-{uuid.uuid4().hex[:6]}"])
    started = time.perf_counter()
    peak, peak_rss = 0, 0
    deadline = started + 120
    while time.perf_counter() < deadline:
        peak = max(peak, registry.count)
        peak_rss = max(peak_rss, rss_bytes(process.pid))
        if Query.objects.filter(pk__in=ids, status__in=Query.FINISHED).count() == len(ids):
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    done = Query.objects.filter(pk__in=ids, status=Query.Status.DONE).count()
    processes.stop("inflight")
    urllib.request.urlopen(urllib.request.Request(
        f"{fake_url}/_fake/config", data=b'{"delay": 0.0}', method="POST",
        headers={"Content-Type": "application/json"}), timeout=5).read()
    return {
        "jobs": len(ids),
        "server_delay_s": sizes.in_flight_delay,
        "worker_concurrency": concurrency,
        "peak_in_flight": peak,
        "peak_rss_mib": round(peak_rss / 2**20, 1),
        "done": done,
        "seconds_incl_startup": round(elapsed, 2),
    }


def run_select_bench(env: dict, quick: bool) -> dict | str:
    script = PROJECT / "bench" / "select_bench.py"
    if not script.exists():
        return "bench/select_bench.py not present"
    # Its Redis read leaves round-robin ticket keys: point it at this run's (flushed) db.
    command = [sys.executable, str(script), "--redis-url", env["REDIS_URL"], *(["--repeat", "20"] if quick else [])]
    completed = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode != 0 or not lines:
        return f"select_bench.py failed ({completed.returncode}): {completed.stderr.strip()[-300:]}"
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"output": lines[-5:]}


def judge(results: dict, sizes: Sizes) -> dict:
    """Compare with the issue's targets; only a full run is judged."""
    if sizes is QUICK:
        return {"judged": False, "reason": "--quick sizes are too small to judge"}
    at_32 = results["overhead"].get(32, {})
    best_rps = max(level["rps"] or 0 for level in results["websocket"].values())
    in_flight, idle = results["in_flight"], results["idle_websockets"]
    return {
        "overhead_p50_at_32": [at_32.get("p50_ms"), TARGETS["overhead_p50_ms_at_32"],
                               (at_32.get("p50_ms") or 1e9) <= TARGETS["overhead_p50_ms_at_32"]],
        "overhead_p99_at_32": [at_32.get("p99_ms"), TARGETS["overhead_p99_ms_at_32"],
                               (at_32.get("p99_ms") or 1e9) <= TARGETS["overhead_p99_ms_at_32"]],
        "ws_queries_per_s": [best_rps, TARGETS["ws_queries_per_s"], best_rps >= TARGETS["ws_queries_per_s"]],
        "in_flight_per_worker": [in_flight["peak_in_flight"], TARGETS["in_flight_per_worker"],
                                 in_flight["peak_in_flight"] >= TARGETS["in_flight_per_worker"]
                                 and in_flight["peak_rss_mib"] < TARGETS["in_flight_rss_mib"]],
        "idle_10k_broker_gib": [round(idle["broker_rss_mib"] / 1024, 2), TARGETS["idle_10k_broker_gib"],
                                idle["broker_rss_mib"] / 1024 < TARGETS["idle_10k_broker_gib"]],
    }


def print_table(results: dict) -> None:
    machine = results["machine"]
    print(f"machine: {machine['cores']} cores, {machine['ram_gib']} GiB, {machine['cpu']}, {machine['platform']}, "
          f"Python {machine['python']}")
    print("versions: " + ", ".join(f"{name} {version}" for name, version in machine["versions"].items()))
    print()
    print(f"{'clients':>7} | {'path':<22} | {'req/s':>8} | {'p50 ms':>8} | {'p95 ms':>8} | {'p99 ms':>8} | {'errors':>6} | stored/billed")
    print("-" * 100)
    for clients, direct in results["direct"].items():
        through = results["websocket"][clients]
        over = results["overhead"][clients]
        print(f"{clients:>7} | {'direct /predict':<22} | {direct['rps']:>8} | {direct['p50_ms']:>8} | {direct['p95_ms']:>8} | {direct['p99_ms']:>8} | {direct['errors']:>6} |")
        print(f"{clients:>7} | {'rentahal /ws':<22} | {through['rps']:>8} | {through['p50_ms']:>8} | {through['p95_ms']:>8} | {through['p99_ms']:>8} | {through['errors']:>6} | {through['stored_done']}/{through['billed']} of {through['requests']}")
        print(f"{clients:>7} | {'overhead (ws - direct)':<22} | {'x' + str(over['rps_ratio']):>8} | {over['p50_ms']:>8} | {over['p95_ms']:>8} | {over['p99_ms']:>8} |")
        cpu = ", ".join(f"{name} {spent}" for name, spent in through["cpu_ms_per_query"].items())
        print(f"{clients:>7} | CPU ms per query: {cpu}")
    v1 = results["v1"]
    for mode in ("plain", "stream"):
        row = v1[mode]
        print(f"/v1 {mode} at {v1['clients']} clients: {row['rps']} q/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, errors {row['errors']}")
    flight = results["in_flight"]
    print(f"in flight, one worker process, server waits {flight['server_delay_s']} s: peak {flight['peak_in_flight']} "
          f"of {flight['jobs']} jobs, peak RSS {flight['peak_rss_mib']} MiB, {flight['done']} done in "
          f"{flight['seconds_incl_startup']} s (incl. worker start)")
    idle = results["idle_websockets"]
    print(f"idle WebSockets: {idle['opened']} open ({idle['failed']} failed, {idle['alive_after_idle']} alive after idling) "
          f"in {idle['connect_seconds']} s; daphne {idle['daphne_baseline_mib']} -> {idle['daphne_rss_mib']} MiB "
          f"({idle['kib_per_socket']} KiB/socket); broker (daphne + worker) {idle['broker_rss_mib']} MiB; "
          f"Redis +{idle['redis_used_delta_mib']} MiB")
    selection = results["selection"]
    print(f"selection: {selection if isinstance(selection, str) else json.dumps(selection)}")
    for name, verdict in results["targets"].items():
        print(f"target {name}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the bench works, measures nothing")
    parser.add_argument("--database", default="rentahal_bench", help="Postgres database of the run (flushed)")
    parser.add_argument("--redis-db", type=int, default=7, help="Redis db number of the run (flushed)")
    args = parser.parse_args()
    results = run(args)
    print_table(results)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
