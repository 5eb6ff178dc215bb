"""One chaos run: its own Postgres and Redis, the broker's processes against them, many users
over /ws, the seeded faults, then the checks. `python -m tests.chaos --help` for the knobs;
README.md, "Chaos suite", for what it proves and its last figures."""
import argparse
import asyncio
import base64
import collections
import json
import logging
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import django

SHARDS = 2
DATABASE = "chaos"
# Environment the run replaces: anything pointing at the machine's shared stores or the test settings.
REPLACED = ("DATABASE_URL", "SHARD_URLS", "REDIS_URL", "CHANNEL_REDIS_URL", "CHANNEL_PREFIX", "DJANGO_SETTINGS_MODULE", "TEST_CONN_MAX_AGE")
# Share of the queries the flooding user sends in one burst, and its floor.
FLOOD_SHARE, FLOOD_MINIMUM = 0.2, 40
# Queries of an ordinary user that may be unanswered at once.
USER_DEPTH = 2
# A query planned late may wait for one of its user's slots (its earlier queries may be
# waiting out a fault); it is still sent until this share of the duration has passed.
# Outcomes are awaited for DRAIN_SECONDS after that.
LAST_SUBMIT_SHARE = 2.0
DRAIN_SECONDS = 60.0
# Ordinary users' query types: mostly chat, some vision, some imagine (which has no worker,
# so it fails with a reason).
QUERY_TYPES = ["chat"] * 8 + ["vision", "imagine"]


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--queries", type=int, default=300, help="queries planned in all (the flood included)")
    parser.add_argument("--users", type=int, default=20, help="users, one of whom floods")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds over which queries are sent and faults happen")
    parser.add_argument("--run-dir", help="where logs, the frame log and summary.json go (default: a new temporary directory)")
    return parser.parse_args(argv)


def environment(postgres, redis, run_dir: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in REPLACED}
    metrics = run_dir / "prometheus"
    metrics.mkdir(exist_ok=True)
    env.update(
        DJANGO_SETTINGS_MODULE="rentahal.settings",
        DATABASE_URL=postgres.url(DATABASE),
        SHARD_URLS=",".join(postgres.url(f"{DATABASE}_shard{index}") for index in range(SHARDS)),
        REDIS_URL=redis.url,
        CHANNEL_PREFIX="chaos",
        OUTBOUND_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
        PYTHONUNBUFFERED="1",
    )
    return env


def make_users(args, clock, url: str, flood_times: list[float]):
    """Return the run's users with their plans: user 0 floods, sending a share of its
    backlog at once at each of `flood_times`; a quarter of the others share the guid
    prefix the shard move moves."""
    from tests.chaos.clients import Planned, User

    rng = random.Random(f"users-{args.seed}")
    prefix = f"{rng.randrange(256):02x}"
    flood = max(FLOOD_MINIMUM, int(args.queries * FLOOD_SHARE))
    others = max(1, args.users - 1)
    per_user = [(args.queries - flood) // others + (1 if index < (args.queries - flood) % others else 0) for index in range(others)]
    image = base64.b64encode(rng.randbytes(96)).decode()
    users = []
    for index in range(args.users):
        guid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if index % 4 == 1 or index == 0 and rng.random() < 0.5:
            guid = prefix + guid[2:]
        if index == 0:
            times = sorted(flood_times[number % len(flood_times)] for number in range(flood))
            types = ["chat"] * flood
        else:
            times = sorted(rng.uniform(0, args.duration * 0.95) for _ in range(per_user[index - 1]))
            types = [rng.choice(QUERY_TYPES) for _ in times]
        plan = []
        for number, (at, query_type) in enumerate(zip(times, types)):
            query = {
                "prompt": f"chaos {args.seed} user {index} query {number} {rng.choice(['why', 'how', 'what', 'when'])}",
                "query_type": query_type, "model_type": "worker_node", "model_name": "",
            }
            if query_type == "vision":
                query["image"] = image
            plan.append(Planned(key=f"chaos-{args.seed}-{index}-{number}", query=query, at=at))
        depth = flood if index == 0 else USER_DEPTH
        users.append(User(index, guid, plan, url=url, clock=clock, depth=depth, log=[]))
    return users, prefix


async def drive(broker, users, runner, faults, duration: float) -> list[str]:
    """Run the users and the faults together, restarting dead broker processes meanwhile;
    return the names of processes that died on their own (faults aside) and were restarted."""
    stop = asyncio.Event()
    restarted: list[str] = []

    async def supervise():
        while not stop.is_set():
            restarted.extend(broker.supervise())
            await asyncio.sleep(0.25)

    supervisor = asyncio.create_task(supervise())
    fault_task = asyncio.create_task(runner.run(faults))
    try:
        last_submit = duration * LAST_SUBMIT_SHARE
        await asyncio.gather(*(user.run(last_submit, last_submit + DRAIN_SECONDS) for user in users))
        await fault_task
    finally:
        stop.set()
        await supervisor
    return restarted


def summarise(args, users, faults, queries, waits, violations, restarted, started: float, setup_seconds: float) -> dict:
    from tests.chaos.checks import percentiles

    tracked = [tracked for user in users for tracked in user.tracked.values()]
    statuses = collections.Counter(query.status for query in queries.values())
    flooder = users[0].guid
    reasons = collections.Counter(
        ("flooder: " if query.user_id == flooder else "") + query.error.split(":")[0][:60]
        for query in queries.values() if query.error
    )
    refusals = collections.Counter()
    for item in tracked:
        refusals.update(item.refusals)
    learned = [item.outcome_at - item.acked_at for item in tracked if item.outcome_at and item.acked_at]
    for fault in faults:
        if fault.kind == "kill_worker" and fault.victim in restarted:
            restarted.remove(fault.victim)
    return {
        "seed": args.seed, "users": args.users, "duration": args.duration, "queries_planned": len(tracked),
        "submitted": sum(1 for item in tracked if item.first_sent is not None),
        "acked": sum(1 for item in tracked if item.query_id), "rows": len(queries),
        "done": statuses.get("done", 0), "failed": statuses.get("failed", 0), "failure_reasons": dict(reasons.most_common(8)),
        "refusals": dict(refusals), "resubmits": sum(item.resubmits for item in tracked),
        "learned_by_resubmit": sum(1 for item in tracked if item.outcome_by == "resubmit"),
        "reconnects": sum(max(0, user.socket_number - 1) for user in users),
        "faults": [
            {"kind": fault.kind, "at": fault.at, "seconds": round((fault.end or 0) - (fault.start or 0), 2), "detail": fault.detail, "error": fault.error}
            for fault in faults
        ],
        "fault_counts": dict(collections.Counter(fault.kind for fault in faults)),
        "restarted_on_their_own": dict(collections.Counter(restarted)),
        "wait_seconds": percentiles(waits), "ack_to_outcome_seconds": percentiles(learned),
        "ledger_total": str(sum((query.cost for query in queries.values()), 0)),
        "violations": violations, "setup_seconds": round(setup_seconds, 1),
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def progress(started: float, message: str) -> None:
    print(f"chaos {time.monotonic() - started:6.1f} s: {message}", flush=True)


def print_summary(summary: dict, out=sys.stdout) -> None:
    write = lambda text: print(text, file=out)  # noqa: E731
    write(f"chaos seed {summary['seed']}: {summary['users']} users, {summary['queries_planned']} queries over {summary['duration']:.0f} s "
          f"({summary['wall_seconds']:.0f} s in all, {summary['setup_seconds']:.0f} s of them starting the stores and the broker)")
    write(f"  submitted {summary['submitted']}, acked {summary['acked']}, rows {summary['rows']}: "
          f"done {summary['done']}, failed {summary['failed']} {summary['failure_reasons']}")
    write(f"  refusals {summary['refusals']}, resubmits {summary['resubmits']} "
          f"(outcome learned by resubmit {summary['learned_by_resubmit']}), reconnects {summary['reconnects']}")
    for fault in summary["faults"]:
        write(f"  fault at {fault['at']:6.1f} s {fault['kind']:<16} {fault['seconds']:5.1f} s  {fault['detail']} {fault['error']}")
    if summary["restarted_on_their_own"]:
        write(f"  processes that died on their own and were restarted: {summary['restarted_on_their_own']}")
    write(f"  wait accepted->finished {summary['wait_seconds']}, ack->outcome at the client {summary['ack_to_outcome_seconds']}")
    write(f"  ledger total {summary['ledger_total']}")
    write(f"  violations: {len(summary['violations'])}")
    for violation in summary["violations"][:40]:
        write(f"    - {violation}")


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="rentahal-chaos-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    from tests.chaos.stores import OwnPostgres, OwnRedis

    postgres, redis = OwnPostgres(), OwnRedis(run_dir)
    try:
        postgres.init()
        postgres.start()
        redis.start()
        postgres.create_databases([DATABASE, *(f"{DATABASE}_shard{index}" for index in range(SHARDS))])
        progress(started, f"Postgres on port {postgres.port} and Redis on port {redis.port} are up")
        env = environment(postgres, redis, run_dir)
        os.environ.update(env)
        django.setup()
        # The run's own progress and summary are its output; the processes' logs are in files.
        logging.getLogger().setLevel(logging.WARNING)
        summary = run_against(args, env, run_dir, postgres, redis, started)
    finally:
        redis.kill()
        postgres.destroy()
    print_summary(summary)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"  logs, frames.jsonl and summary.json in {run_dir}")
    return 1 if summary["violations"] else 0


def run_against(args, env, run_dir: Path, postgres, redis, started: float) -> dict:
    from django.core.management import call_command
    from django.db import connections

    from tests.chaos import checks
    from tests.chaos.broker import Broker
    from tests.chaos.faults import FaultRunner, schedule

    call_command("migrate_all", verbosity=0, stdout=open(os.devnull, "w"))
    progress(started, "databases migrated")
    broker = Broker(env, run_dir, seed=args.seed)
    try:
        broker.register_model_servers(broker.start_model_servers())
        broker.start_broker()
        progress(started, f"broker up at {broker.url}; running {args.duration:.0f} s of queries and faults")
        connections.close_all()
        faults = schedule(args.seed, args.duration)
        t0 = time.monotonic()
        setup_seconds = t0 - started
        clock = lambda: time.monotonic() - t0  # noqa: E731
        users, prefix = make_users(args, clock, broker.url, [fault.at for fault in faults if fault.kind == "flood"])
        runner = FaultRunner(
            broker, postgres, redis, seed=args.seed, clock=clock, prefix=prefix, shards=[f"shard{index}" for index in range(SHARDS)]
        )
        restarted = asyncio.run(drive(broker, users, runner, faults, args.duration))
    finally:
        broker.stop()
    with open(run_dir / "frames.jsonl", "w") as log:
        for user in users:
            for entry in user.log:
                log.write(json.dumps(entry) + "\n")
    queries, charges, rows_of_users, twice = checks.read_rows()
    waits, late = checks.waits(queries, faults)
    violations = [
        *twice,
        *checks.check_placement(),
        *checks.check_ledger(queries, charges, rows_of_users),
        *checks.check_clients(users, queries),
        *checks.check_sockets(users),
        *late,
        *(f"fault {fault.kind} at {fault.at} s could not be caused: {fault.error}" for fault in faults if fault.error),
    ]
    return summarise(args, users, faults, queries, waits, violations, restarted, started, setup_seconds)
