"""The one place a worker is picked for a query: `select_worker`, a pure function over a
snapshot of the pool configuration (pools.config) and of the shared runtime state
(pools.state). No I/O here. The configuration types are in `snapshot`, the realm rules in
`planning`, the runtime state in `runtime` and the pool strategies in `strategies`."""
from __future__ import annotations

import dataclasses
import random

from pools.selection.planning import Plan, Tier, plan_selection
from pools.selection.runtime import MAX_HEALTH, MemberState, SharedState
from pools.selection.snapshot import PoolInfo, Snapshot, WorkerInfo, tokens_of
from pools.selection.strategies import best_peer, choose, healthiest
from rentahal.errors import BrokerError

__all__ = [
    "MAX_HEALTH", "MemberState", "NoWorkerAvailable", "Plan", "PoolInfo", "Selection", "SharedState", "Snapshot",
    "Tier", "WorkerInfo", "plan_selection", "select_worker", "tokens_of",
]

# Cooldown kinds a direct (pool-less) query may still try when nothing else is left: the
# server may be back. A rate limit or refused credentials will not be, so they stay out.
LAST_RESORT_KINDS = frozenset({"server", "timeout"})


class NoWorkerAvailable(BrokerError):
    """No worker can serve this query now; the message says why, for the user.

    `is_busy` is true when every candidate was left out only for being at its concurrency
    cap, so waiting a moment may help.
    """

    code = "no_worker"
    http_status = 503

    def __init__(self, message: str, *, is_busy: bool = False):
        super().__init__(message)
        self.is_busy = is_busy


@dataclasses.dataclass(frozen=True)
class Selection:
    worker: WorkerInfo
    pool: PoolInfo | None
    strategy: str  # the strategy that chose; auto is resolved; "direct" or "named" without a pool
    realm: str  # the query's realm

    @property
    def source_realm(self) -> str:
        """Return the realm that lent the worker: its pool's realm, else the worker's own."""
        if self.pool is not None and self.pool.realm:
            return self.pool.realm
        return self.worker.realm

    @property
    def is_cross_realm(self) -> bool:
        return self.source_realm not in ("", self.realm)


def select_worker(
    plan: Plan,
    state: SharedState,
    *,
    prompt: str = "",
    exclude: frozenset[str] = frozenset(),
    full: frozenset[str] = frozenset(),
    rng: random.Random | None = None,
    explore: float = 0.1,
) -> Selection:
    """Return the worker that should serve the query, or raise NoWorkerAvailable saying why.

    `exclude` holds workers that already failed this query; `full` those found at their cap
    since the state was read. Blacklisted (by an operator or by the health rules), cooling
    and full members are skipped; within a pool, specializations narrow the candidates and
    the pool's strategy picks.
    """
    rng = rng or random
    if plan.missing_alias:
        raise NoWorkerAvailable(f"No pool alias named {plan.missing_alias} exists.")
    reasons: list[str] = []
    busy_only = True
    words: frozenset[str] | None = None
    for tier in plan.tiers:
        available, left_out, tier_busy = available_workers(tier.workers, state, exclude, full)
        if not available and tier.pool is None and not tier.is_remote:
            available = last_resort(tier.workers, state, exclude, full)
        if not available:
            busy_only = busy_only and tier_busy
            if tier.pool is not None:
                reasons.append(f"pool {tier.pool.name}{' in ' + tier.pool.realm if tier.pool.realm else ''} has no available member ({left_out})")
            elif tier.is_named:
                reasons.append(f"worker {tier.workers[0].name} is not available ({left_out})")
            elif left_out:
                reasons.append(left_out)
            continue
        if tier.is_remote:
            return Selection(best_peer(available, state, rng), None, "peer", plan.realm)
        if tier.pool is None:
            strategy = "named" if tier.is_named else "direct"
            return Selection(healthiest(available, state, rng), None, strategy, plan.realm)
        if words is None:
            words = tokens_of(prompt)
        candidates = [worker for worker in available if worker.matches(words)] or available
        worker, strategy = choose(tier.pool, candidates, state, rng, explore)
        return Selection(worker, tier.pool, strategy, plan.realm)
    if not any(tier.workers for tier in plan.tiers):
        if plan.tiers and plan.tiers[0].pool is not None:
            raise NoWorkerAvailable(f"Pool {plan.tiers[0].pool.name} has no members.")
        raise NoWorkerAvailable(f"No {plan.wanted} is available.")
    raise NoWorkerAvailable(
        f"No {plan.wanted} is available: {'; '.join(reasons)}.", is_busy=busy_only and bool(reasons)
    )


def is_blacklisted(worker: WorkerInfo, state: SharedState) -> bool:
    """Return whether an operator (configuration) or the health rules (runtime) took the worker out."""
    return worker.is_blacklisted or state.of(worker.name).is_blacklisted


def available_workers(
    workers: tuple[WorkerInfo, ...], state: SharedState, exclude: frozenset[str], full: frozenset[str]
) -> tuple[list[WorkerInfo], str, bool]:
    """Return the workers that may serve now, a readable list of those left out, and whether
    every one left out was only busy."""
    available: list[WorkerInfo] = []
    left_out: list[str] = []
    only_busy = True
    for worker in workers:
        member = state.of(worker.name)
        if worker.name in exclude:
            # Not a reason to stop waiting for a busy member: it is simply not tried again.
            left_out.append(f"{worker.name} failed this query")
        elif is_blacklisted(worker, state):
            left_out.append(f"{worker.name} is blacklisted")
            only_busy = False
        elif member.cooldown_until > state.now:
            left_out.append(f"{worker.name} is cooling down for {member.cooldown_until - state.now:.0f}s")
            only_busy = False
        elif worker.name in full or (worker.max_concurrency and member.in_flight >= worker.max_concurrency):
            left_out.append(f"{worker.name} is busy with {max(member.in_flight, worker.max_concurrency)} queries")
        else:
            available.append(worker)
    has_busy = any(" is busy " in reason for reason in left_out)
    return available, ", ".join(left_out), only_busy and has_busy


def last_resort(
    workers: tuple[WorkerInfo, ...], state: SharedState, exclude: frozenset[str], full: frozenset[str]
) -> list[WorkerInfo]:
    """Return the cooling worker whose cooldown ends first, for a query with no pool.

    Without pools the original broker had no cooldowns at all ("as before"): one failed
    answer must not lock a lone server out, so a server-fault cooldown is only a preference.
    """
    cooling = [
        worker
        for worker in workers
        if worker.name not in exclude
        and worker.name not in full
        and not is_blacklisted(worker, state)
        and state.of(worker.name).cooldown_kind in LAST_RESORT_KINDS
        and not (worker.max_concurrency and state.of(worker.name).in_flight >= worker.max_concurrency)
    ]
    if not cooling:
        return []
    return [min(cooling, key=lambda worker: (state.of(worker.name).cooldown_until, worker.name))]
