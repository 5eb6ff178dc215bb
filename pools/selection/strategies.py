"""How a pool picks among its available members: one function per strategy, and auto's rule
for choosing one from the members' health."""
from __future__ import annotations

import hashlib

from pools.models import Strategy
from pools.selection.runtime import SharedState
from pools.selection.snapshot import PoolInfo, WorkerInfo

# auto's thresholds: a spread of health scores this wide means "trust health"; a pool this
# sick on average means "spread the load".
AUTO_SMALL_POOL = 2
AUTO_VARIANCE_THRESHOLD = 400.0
AUTO_STRESSED_AVERAGE = 70.0


def choose(pool: PoolInfo, candidates: list[WorkerInfo], state: SharedState, rng, explore: float) -> tuple[WorkerInfo, str]:
    """Apply the pool's strategy to its candidates; return the choice and the strategy used."""
    strategy = pool.strategy
    if strategy == Strategy.AUTO:
        strategy = resolve_auto(candidates, state)
    if strategy == Strategy.HEALTH:
        return healthiest(candidates, state, rng), strategy
    if strategy == Strategy.ROUND_ROBIN:
        ordered = sorted(candidates, key=lambda worker: worker.name)
        ticket = state.tickets.get(pool.id, 1)
        return ordered[(ticket - 1) % len(ordered)], strategy
    if strategy == Strategy.LEAST_BUSY:
        return least_busy(candidates, state, rng), strategy
    if strategy == Strategy.RANDOM:
        return rng.choice(candidates), strategy
    if strategy == Strategy.AFFINITY:
        remembered = state.affinity.get(pool.id)
        for worker in candidates:
            if worker.name == remembered:
                return worker, strategy
        return settle(candidates, state, rng), strategy
    if strategy == Strategy.LATENCY:
        return fastest(candidates, state, rng, explore), strategy
    if strategy == Strategy.WEIGHTED:
        table = pool.weight_table()
        weights = [table.get(worker.name, 1) for worker in candidates]
        return rng.choices(candidates, weights=weights)[0], strategy
    raise ValueError(f"unknown strategy {strategy!r} on pool {pool.name}")


def resolve_auto(candidates: list[WorkerInfo], state: SharedState) -> str:
    """Return the strategy auto stands for with these healthy members."""
    if len(candidates) <= AUTO_SMALL_POOL:
        return Strategy.HEALTH
    scores = [state.of(worker.name).health_score for worker in candidates]
    average = sum(scores) / len(scores)
    variance = sum((score - average) ** 2 for score in scores) / len(scores)
    if variance > AUTO_VARIANCE_THRESHOLD:
        return Strategy.HEALTH
    if average < AUTO_STRESSED_AVERAGE:
        return Strategy.LEAST_BUSY
    return Strategy.ROUND_ROBIN


def best_by(candidates: list[WorkerInfo], key, rng) -> WorkerInfo:
    """Return the candidate with the lowest key; a tie goes to a random one, not the first."""
    best_key = min(key(worker) for worker in candidates)
    tied = [worker for worker in candidates if key(worker) == best_key]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


def healthiest(candidates: list[WorkerInfo], state: SharedState, rng) -> WorkerInfo:
    def rank(worker: WorkerInfo) -> tuple[float, int]:
        member = state.of(worker.name)
        return -member.health_score, member.in_flight

    return best_by(candidates, rank, rng)


def least_busy(candidates: list[WorkerInfo], state: SharedState, rng) -> WorkerInfo:
    return best_by(candidates, lambda worker: max(0, state.of(worker.name).in_flight), rng)


def settle(candidates: list[WorkerInfo], state: SharedState, rng) -> WorkerInfo:
    """Return the member a conversation without one (new, or its member gone) settles on.

    The least busy, and among those the one ranked first for this conversation by
    rendezvous hashing: different conversations spread over the members evenly, and a
    conversation whose remembered member expired comes back to the same one (its cache may
    still be warm) while the load allows.
    """
    if not state.affinity_key:
        return least_busy(candidates, state, rng)
    fewest = min(max(0, state.of(worker.name).in_flight) for worker in candidates)
    idle = [worker for worker in candidates if max(0, state.of(worker.name).in_flight) == fewest]
    return max(idle, key=lambda worker: rendezvous_rank(state.affinity_key, worker.name))


def rendezvous_rank(key: str, worker: str) -> bytes:
    return hashlib.blake2b(f"{key}\x00{worker}".encode(), digest_size=8).digest()


def fastest(candidates: list[WorkerInfo], state: SharedState, rng, explore: float) -> WorkerInfo:
    """Return the member with the lowest expected latency, exploring now and then.

    Expected latency is the EWMA time to first byte divided by the EWMA success rate, so a
    member that answers fast but often fails ranks behind a steady one. A member with no
    data yet ranks first, and with probability `explore` any member is tried, so one that
    recovered after a bad spell is measured again.
    """
    if len(candidates) > 1 and rng.random() < explore:
        return rng.choice(candidates)

    def expected(worker: WorkerInfo) -> float:
        member = state.of(worker.name)
        if member.latency is None:
            return 0.0
        success = member.success if member.success is not None else 1.0
        return member.latency / max(success, 0.01)

    return best_by(candidates, expected, rng)


def best_peer(candidates: list[WorkerInfo], state: SharedState, rng) -> WorkerInfo:
    """Return the peer broker to ask: the cheapest advertised price, then the lowest expected
    latency (recent time to first byte over recent success, so errors count), then the most
    room left of its advertised capacity (peers at capacity were already left out)."""

    def rank(worker: WorkerInfo) -> tuple[float, float, float]:
        member = state.of(worker.name)
        latency = (member.latency or 0.0) / max(member.success if member.success is not None else 1.0, 0.01)
        load = member.in_flight / worker.max_concurrency if worker.max_concurrency else 0.0
        return worker.price, latency, load

    return best_by(candidates, rank, rng)
