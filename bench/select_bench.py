"""Cost of one worker selection (pools.selection) with 10, 100 and 1,000 pool members.

Usage: .venv/bin/python bench/select_bench.py [--repeat N] [--redis-url redis://127.0.0.1:6379/14]

Measures plan_selection + select_worker, the pure part run for every query, per strategy,
over a snapshot and a shared state built in memory (no database, no network). With
--redis-url it also times pools.state.read_state, the one Redis round trip that feeds a
selection (it writes only round-robin ticket keys under pools:rr:; use a scratch db).
Prints a table, then one JSON line with every figure in microseconds.
"""
import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rentahal.settings")

import django  # noqa: E402

django.setup()

from pools.models import Strategy  # noqa: E402
from pools.selection import MemberState, PoolInfo, SharedState, Snapshot, WorkerInfo, plan_selection, select_worker  # noqa: E402

SIZES = (10, 100, 1000)
PROMPT = "Explain how a Python decorator wraps a function, with an example."


def build(size: int, strategy: str, rng: random.Random) -> tuple[Snapshot, SharedState]:
    workers = [
        WorkerInfo(
            id=index, name=f"w{index:04d}", query_type="chat", realm="$CHAT", address=f"10.0.0.{index % 250}:8000",
            wire_format="openai", max_concurrency=4,
            topics=(("code", (("python",), ("django",))),) if index % 10 == 0 else (),
        )
        for index in range(size)
    ]
    pool = PoolInfo(
        id=1, name="$CHAT", realm="$CHAT", query_type="chat", strategy=strategy,
        members=tuple(worker.name for worker in workers), weights=tuple(rng.randint(1, 5) for _ in workers),
    )
    now = time.time()
    members = {
        worker.name: MemberState(
            in_flight=rng.randint(0, 3), latency=rng.uniform(0.05, 2.0), success=rng.uniform(0.8, 1.0),
            cooldown_until=now + 30 if rng.random() < 0.05 else 0.0, cooldown_kind="server",
            health_score=rng.uniform(60, 100),
        )
        for worker in workers
    }
    state = SharedState(now=now, members=members, tickets={1: 42}, affinity={1: workers[size // 2].name})
    return Snapshot.build(workers, [pool]), state


def time_selection(snapshot: Snapshot, state: SharedState, repeat: int, rng: random.Random) -> float:
    """Return the median microseconds of one plan + select over `repeat` runs."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        plan = plan_selection(snapshot, query_type="chat", realm="$CHAT")
        select_worker(plan, state, prompt=PROMPT, rng=rng)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def time_state_read(snapshot: Snapshot, repeat: int) -> float:
    from pools import state as shared

    plan = plan_selection(snapshot, query_type="chat", realm="$CHAT")
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        shared.read_state(plan, affinity_key="bench", advance_pool=1)
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--redis-url", help="Also time the Redis state read against this (scratch) database.")
    options = parser.parse_args()
    if options.redis_url:
        from django.conf import settings

        settings.REDIS_URL = options.redis_url
    rng = random.Random(1)
    results: dict[str, dict[str, float]] = {}
    for strategy in Strategy.values:
        results[strategy] = {}
        for size in SIZES:
            snapshot, state = build(size, strategy, rng)
            repeat = max(50, options.repeat // (size // 10))
            results[strategy][str(size)] = round(time_selection(snapshot, state, repeat, rng), 1)
    if options.redis_url:
        results["redis_state_read"] = {}
        for size in SIZES:
            snapshot, _ = build(size, "auto", rng)
            results["redis_state_read"][str(size)] = round(time_state_read(snapshot, max(20, options.repeat // size)), 1)
    print(f"{'median µs per selection':24}" + "".join(f"{size:>10}" for size in SIZES))
    for name, row in results.items():
        print(f"{name:24}" + "".join(f"{row[str(size)]:>10.1f}" for size in SIZES))
    print(json.dumps({"benchmark": "select_worker", "unit": "us", "results": results}))


if __name__ == "__main__":
    main()
