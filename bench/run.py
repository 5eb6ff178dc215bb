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
class Workload:
    """A streamed answer the fake server gives (`tokens` pieces, `token_delay` apart), in one
    wire format, and the requests sent per client count."""

    name: str
    wire_format: str
    tokens: int
    token_delay: float
    requests: dict[int, int]


@dataclasses.dataclass(frozen=True)
class Sizes:
    levels: tuple[int, ...]
    requests: dict[int, int]  # requests per client count
    idle_sockets: int
    in_flight_jobs: int
    in_flight_delay: float
    in_flight_concurrency: int
    worker_concurrency: int | None  # None: run_realm_worker's default, as deployed
    workers: int
    workloads: tuple[Workload, ...] = ()


FULL = Sizes(
    levels=(1, 32, 256),
    requests={1: 500, 32: 6000, 256: 8000},
    idle_sockets=10_000,
    in_flight_jobs=600,
    in_flight_delay=1.0,
    in_flight_concurrency=1000,
    worker_concurrency=None,
    workers=1,
    workloads=(
        Workload("openai_16_tokens", "openai", 16, 0.0, {1: 300, 32: 3000, 256: 4000}),
        Workload("openai_200_tokens", "openai", 200, 0.0, {1: 100, 32: 1000, 256: 1536}),
        Workload("openai_200_tokens_at_5ms", "openai", 200, 0.005, {256: 768, 1024: 1024}),
        Workload("ollama_16_tokens", "ollama", 16, 0.0, {32: 2000}),
    ),
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
    workloads=(
        Workload("openai_16_tokens", "openai", 16, 0.0, {1: 4, 2: 4}),
        Workload("openai_200_tokens", "openai", 200, 0.0, {2: 4}),
        Workload("openai_200_tokens_at_5ms", "openai", 20, 0.005, {4: 4}),
        Workload("ollama_16_tokens", "ollama", 16, 0.0, {2: 4}),
    ),
)
# A model server registered by the bench takes this many calls at once: the per-server cap
# (DEFAULT_WORKER_CONCURRENCY when a server sets none) is an operator's choice, not the broker's.
SERVER_CONCURRENCY = 4096
TARGETS = {
    "short_streams_queries_per_s_at_32": 500,
    "long_streams_share_of_direct_at_32": 0.25,
    "slow_streams_share_of_direct_at_256": 0.90,
    "one_client_p50_over_direct_ms": 3.0,
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


def summarise(latencies: list[float], elapsed: float, errors: int = 0, first_chunks: list[float] = ()) -> dict:
    """Requests answered, rate and latency percentiles; with `first_chunks` (seconds from the
    request to the first piece of a streamed answer), their p50 and p99 too."""
    # Imported here: run() puts the project on sys.path before any load is measured.
    from rentahal.metrics import percentile

    def milliseconds(ordered: list[float], fraction: float) -> float | None:
        value = percentile(ordered, fraction)
        return None if value is None else round(value * 1000, 3)

    ordered = sorted(latencies)
    summary = {
        "requests": len(ordered),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(ordered) / elapsed, 1) if elapsed else None,
        "p50_ms": milliseconds(ordered, 0.50),
        "p95_ms": milliseconds(ordered, 0.95),
        "p99_ms": milliseconds(ordered, 0.99),
    }
    if first_chunks:
        firsts = sorted(first_chunks)
        summary["first_chunk_p50_ms"] = milliseconds(firsts, 0.50)
        summary["first_chunk_p99_ms"] = milliseconds(firsts, 0.99)
    return summary


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


ROUTES = {"predict": "/predict", "openai": "/v1/chat/completions", "ollama": "/api/chat"}
# What the last bytes of a complete answer contain, per format.
ENDINGS = {"predict": b"response", "openai": b"[DONE]", "ollama": b'"done":true'}


def direct_payload(wire_format: str) -> bytes:
    """The request rentahal's client for the format sends for the bench's prompt."""
    if wire_format == "predict":
        return orjson.dumps({"prompt": PROMPT, "type": "chat", "model_type": "worker_node", "model_name": ""})
    messages = [{"role": "user", "content": PROMPT}]
    return orjson.dumps({"messages": messages, "stream": True, "model": "fake-model"})


async def direct_load(url: str, clients: int, total: int, wire_format: str = "predict") -> dict:
    """Call the fake server the way rentahal's client for the format does, from `clients`
    tasks, reading each answer to its end (streams as they arrive)."""
    payload, route, ending = direct_payload(wire_format), ROUTES[wire_format], ENDINGS[wire_format]
    headers = {"Content-Type": "application/json"}
    budget, latencies, first_chunks, errors = Budget(total), [], [], 0

    async def call(session) -> tuple[bool, float | None]:
        started = time.perf_counter()
        first = None
        tail = b""
        async with session.post(f"{url}{route}", data=payload, headers=headers) as response:
            async for piece in response.content.iter_any():
                if first is None:
                    first = time.perf_counter() - started
                tail = (tail + piece)[-64:]
        return response.status == 200 and ending in tail, first

    async def client(session):
        nonlocal errors
        while budget.take():
            started = time.perf_counter()
            ok, first = await call(session)
            if ok:
                latencies.append(time.perf_counter() - started)
                if wire_format != "predict":
                    first_chunks.append(first)
            else:
                errors += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        warm = Budget(min(clients, 50))

        async def warmup():
            while warm.take():
                await call(session)
        await asyncio.gather(*(warmup() for _ in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return summarise(latencies, elapsed, errors, first_chunks)


async def open_socket(ws_url: str, guid: str):
    socket_ = await ws_connect(
        ws_url, additional_headers={"Cookie": f"user_guid={guid}"}, compression=None, max_size=None,
        open_timeout=120, ping_interval=None,
    )
    while True:
        frame = orjson.loads(await socket_.recv())
        if frame["type"] == "huggingface_update":
            return socket_


async def websocket_load(ws_url: str, clients: int, total: int, meter: "CpuMeter | None" = None) -> dict:
    """Each client is a user with its own socket and one query outstanding at a time; with
    `meter`, the CPU per query of the queries alone (read once the sockets are open)."""
    submit = orjson.dumps({"type": "submit_query", "query": {
        "prompt": PROMPT, "query_type": "chat", "model_type": "worker_node", "model_name": ""}}).decode()
    sockets = []
    for start in range(0, clients, 64):
        sockets += await asyncio.gather(*(open_socket(ws_url, str(uuid.uuid4())) for _ in range(start, min(clients, start + 64))))
    budget, latencies, first_chunks, errors, received = Budget(total), [], [], 0, []
    chunk_frames = 0

    async def client(sock):
        nonlocal errors, chunk_frames
        while budget.take():
            started = time.perf_counter()
            first = None
            await sock.send(submit)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    while True:
                        frame = orjson.loads(await sock.recv())
                        if frame["type"] == "query_chunk":
                            chunk_frames += 1
                            if first is None:
                                first = time.perf_counter() - started
                        if frame["type"] == "query_result":
                            latencies.append(time.perf_counter() - started)
                            received.append(frame["query_id"])
                            if first is not None:
                                first_chunks.append(first)
                            break
                        if frame["type"] == "error":
                            errors += 1
                            break
            except TimeoutError:
                errors += 1

    cpu_before = meter.read() if meter else None
    started = time.perf_counter()
    await asyncio.gather(*(client(sock) for sock in sockets))
    elapsed = time.perf_counter() - started
    cpu_after = meter.read() if meter else None
    await asyncio.gather(*(sock.close() for sock in sockets))
    summary = summarise(latencies, elapsed, errors, first_chunks)
    if meter:
        summary["cpu_ms_per_query"] = CpuMeter.per_query(cpu_before, cpu_after, len(latencies))
    summary["chunk_frames_per_query"] = round(chunk_frames / max(1, len(received)), 1)
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


def scaled(sizes: Sizes, scale: float) -> Sizes:
    """Return the sizes with every level's requests times `scale` (at least one per client):
    a shorter run on a box shared with other work, where a full one would take an hour."""
    if scale == 1:
        return sizes

    def fewer(requests: dict[int, int]) -> dict[int, int]:
        return {clients: max(clients, round(total * scale)) for clients, total in requests.items()}

    workloads = tuple(dataclasses.replace(workload, requests=fewer(workload.requests)) for workload in sizes.workloads)
    return dataclasses.replace(sizes, requests=fewer(sizes.requests), workloads=workloads)


def run(args) -> dict:
    sizes = QUICK if args.quick else scaled(FULL, args.scale)
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
    from django.utils import timezone

    from accounts.models import Charge, Query
    from realms.defaults import ensure_default_realms
    from realms.models import Realm

    ensure_default_realms(Realm)
    log_dir = Path(tempfile.mkdtemp(prefix="rentahal-bench-"))
    processes = Processes(env, log_dir)
    results: dict = {"machine": machine_info(), "quick": args.quick, "scale": args.scale, "logs": str(log_dir),
                     "fd_limit": hard_limit, "load_average_at_start": os.getloadavg()}
    try:
        fake_port, daphne_port = free_port(), free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        ws_url = f"ws://127.0.0.1:{daphne_port}/ws"
        processes.start("fake", [sys.executable, "manage.py", "fake_model_server", "--port", str(fake_port)])
        processes.start("daphne", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(daphne_port),
                                   "rentahal.asgi:application"])
        wait_for(lambda: is_listening(fake_port), "the fake model server")
        wait_for(lambda: is_listening(daphne_port), "daphne")
        serve_only(fake_url, "predict")
        start_workers(processes, sizes.workers, sizes.worker_concurrency, redis_client)

        def measure(clients: int, total: int, wire_format: str) -> tuple[dict, dict]:
            """The same load direct and through /ws; the second with CPU per query and its rows checked."""
            direct = asyncio.run(direct_load(fake_url, clients, total, wire_format))
            level_started = timezone.now()
            through = asyncio.run(websocket_load(ws_url, clients, total, CpuMeter.for_run(processes, args.database)))
            through["left_unfinished"] = wait_for_quiet(Query, level_started)
            query_ids = through.pop("query_ids")
            through["stored_done"] = Query.objects.filter(pk__in=query_ids, status=Query.Status.DONE).count()
            through["billed"] = Charge.objects.filter(query_id__in=query_ids).count()
            # Each level as it ends, on stderr: a run on a busy box may not get to the end.
            print(json.dumps({"wire_format": wire_format, "clients": clients, "direct": direct, "websocket": through}),
                  file=sys.stderr, flush=True)
            return direct, through

        results["direct"], results["websocket"], results["overhead"] = {}, {}, {}
        for clients in sizes.levels:
            direct, through = measure(clients, sizes.requests[clients], "predict")
            results["direct"][clients] = direct
            results["websocket"][clients] = through
            results["overhead"][clients] = overhead(direct, through)
        results["streaming"] = {}
        for workload in sizes.workloads:
            serve_only(fake_url, workload.wire_format, tokens=workload.tokens, token_delay=workload.token_delay)
            levels = results["streaming"][workload.name] = {}
            for clients, total in workload.requests.items():
                direct, through = measure(clients, total, workload.wire_format)
                levels[clients] = {"direct": direct, "websocket": through, "overhead": overhead(direct, through)}
        results["cost_growth"] = cost_growth(results)
        results["v1"] = measure_v1(daphne_port, sizes)

        for n in range(sizes.workers):
            processes.stop(f"worker{n}")
        serve_only(fake_url, "predict")
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
    results["load_average_at_end"] = os.getloadavg()
    results["targets"] = judge(results, sizes)
    return results


def wait_for_quiet(query_model, since, timeout: float = 180) -> int:
    """Wait until no query accepted since `since` is unfinished (those a client gave up on are
    still served), so the next level does not queue behind them; return how many were still
    unfinished at the end."""
    unfinished = query_model.objects.filter(status__in=query_model.UNFINISHED, accepted_at__gte=since)
    deadline = time.monotonic() + timeout
    while (left := unfinished.count()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def serve_only(fake_url: str, wire_format: str, *, tokens: int = 0, token_delay: float = 0.0) -> None:
    """Have the fake server answer `tokens` pieces `token_delay` apart, and make it the only
    chat worker, speaking `wire_format` (the processes see the change by the pool version)."""
    import urllib.request

    from pools.models import Worker

    urllib.request.urlopen(urllib.request.Request(
        f"{fake_url}/_fake/config", data=json.dumps({"tokens": tokens, "token_delay": token_delay}).encode(),
        method="POST", headers={"Content-Type": "application/json"}), timeout=5).read()
    for worker in Worker.objects.all():
        worker.delete()
    Worker.objects.create(name=f"bench-{wire_format}", address=fake_url, query_type="chat", wire_format=wire_format,
                          model="fake-model", max_concurrency=SERVER_CONCURRENCY)


def cost_growth(results: dict) -> dict:
    """CPU ms per query of the broker (daphne, worker, Postgres, Redis), by answer length and
    clients: how the cost grows with the work. One piece is `/predict`'s answer."""
    def broker_cpu(level: dict) -> float:
        cpu = level["cpu_ms_per_query"]
        return round(sum(cpu.get(part, 0.0) for part in ("daphne", "worker0", "postgres", "redis")), 2)

    growth = {"1 piece (predict)": {clients: broker_cpu(level) for clients, level in results["websocket"].items()}}
    for name, levels in results["streaming"].items():
        growth[name] = {clients: broker_cpu(level["websocket"]) for clients, level in levels.items()}
    return growth


def start_workers(processes: Processes, count: int, concurrency: int | None, redis_client) -> None:
    from rq import Worker as RQWorker

    before = len(RQWorker.all(connection=redis_client))
    for n in range(count):
        chosen = ["--concurrency", str(concurrency)] if concurrency else []
        processes.start(f"worker{n}", [sys.executable, "manage.py", "run_realm_worker", *chosen,
                                       "--name", f"bench-{n}-{uuid.uuid4().hex[:6]}"])
    wait_for(lambda: len(RQWorker.all(connection=redis_client)) >= before + count, "the realm workers")


def overhead(direct: dict, through: dict) -> dict:
    def minus(key):
        if direct.get(key) is None or through.get(key) is None:
            return None
        return round(through[key] - direct[key], 3)

    return {
        "p50_ms": minus("p50_ms"),
        "p95_ms": minus("p95_ms"),
        "p99_ms": minus("p99_ms"),
        "first_chunk_p50_ms": minus("first_chunk_p50_ms") if "first_chunk_p50_ms" in direct else None,
        "rps_ratio": round(direct["rps"] / through["rps"], 2) if through["rps"] else None,
        "share_of_direct": round(through["rps"] / direct["rps"], 3) if direct["rps"] and through["rps"] else None,
    }


async def v1_load(base: str, secret: str, clients: int, total: int, *, stream: bool) -> dict:
    """POST /v1/chat/completions (plain, or streamed and read to `data: [DONE]`) from `clients` tasks with one key."""
    # The realm, not a worker: the streamed workloads before this one replaced the chat worker.
    payload = orjson.dumps({"model": "$CHAT", "stream": stream, "messages": [{"role": "user", "content": PROMPT}]})
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
    streaming = results["streaming"]

    def level(name: str, clients: int) -> dict:
        return streaming.get(name, {}).get(clients, {"websocket": {}, "overhead": {}})

    short, long_, slow = level("openai_16_tokens", 32), level("openai_200_tokens", 32), level("openai_200_tokens_at_5ms", 256)
    slow_share = slow["overhead"].get("share_of_direct") or 0
    one_client = max(results["overhead"][1]["p50_ms"] or 1e9, level("openai_16_tokens", 1)["overhead"].get("p50_ms") or 1e9)
    return {
        "short_streams_queries_per_s_at_32": [short["websocket"].get("rps"), TARGETS["short_streams_queries_per_s_at_32"],
                                              (short["websocket"].get("rps") or 0) >= TARGETS["short_streams_queries_per_s_at_32"]],
        "long_streams_share_of_direct_at_32": [long_["overhead"].get("share_of_direct"),
                                               TARGETS["long_streams_share_of_direct_at_32"],
                                               (long_["overhead"].get("share_of_direct") or 0)
                                               >= TARGETS["long_streams_share_of_direct_at_32"]],
        "slow_streams_share_of_direct_at_256": [slow_share, TARGETS["slow_streams_share_of_direct_at_256"],
                                                slow_share >= TARGETS["slow_streams_share_of_direct_at_256"]
                                                and slow["websocket"].get("errors") == 0],
        "one_client_p50_over_direct_ms": [one_client, TARGETS["one_client_p50_over_direct_ms"],
                                          one_client <= TARGETS["one_client_p50_over_direct_ms"]],
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
    print(f"load average at start {results['load_average_at_start']}, at end {results['load_average_at_end']}; "
          f"requests scaled by {results['scale']}")
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
    print()
    print(f"{'workload':<26} | {'clients':>7} | {'direct/s':>8} | {'/ws/s':>8} | {'share':>6} | {'p50 d/ws ms':>15} | "
          f"{'p99 d/ws ms':>15} | {'1st chunk d/ws':>15} | {'err':>3} | stored/billed | broker CPU ms/q")
    print("-" * 150)
    for name, levels in results["streaming"].items():
        for clients, level in levels.items():
            direct, through, over = level["direct"], level["websocket"], level["overhead"]
            print(f"{name:<26} | {clients:>7} | {direct['rps']:>8} | {through['rps']:>8} | {over['share_of_direct']!s:>6} | "
                  f"{direct['p50_ms']!s:>7}/{through['p50_ms']!s:<7} | {direct['p99_ms']!s:>7}/{through['p99_ms']!s:<7} | "
                  f"{direct.get('first_chunk_p50_ms')!s:>7}/{through.get('first_chunk_p50_ms')!s:<7} | "
                  f"{through['errors']:>3} | {through['stored_done']}/{through['billed']} of {through['requests']} | "
                  f"{results['cost_growth'][name][clients]}")
    print("CPU ms per query by process: " + "; ".join(
        f"{name} at {clients}: " + ", ".join(f"{part} {spent}" for part, spent in level["websocket"]["cpu_ms_per_query"].items())
        for name, levels in results["streaming"].items() for clients, level in levels.items()))
    print(f"broker CPU ms per query by answer and clients: {json.dumps(results['cost_growth'])}")
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
    parser.add_argument("--scale", type=float, default=1.0,
                        help="send this fraction of the full run's requests per level (e.g. 0.1 on a shared box)")
    args = parser.parse_args()
    results = run(args)
    print_table(results)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
