"""The one place a worker is picked for a query: pure functions over a snapshot of the pool
configuration (pools.config) and of the shared runtime state (pools.state). No I/O here."""
from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections.abc import Iterable

from pools.models import Strategy

# auto's thresholds, from seed 000: a spread of health scores this wide means "trust health";
# a pool this sick on average means "spread the load".
AUTO_SMALL_POOL = 2
AUTO_VARIANCE_THRESHOLD = 400.0
AUTO_STRESSED_AVERAGE = 70.0
# Cooldown kinds a direct (pool-less) query may still try when nothing else is left: the
# server may be back. A rate limit or refused credentials will not be, so they stay out.
LAST_RESORT_KINDS = frozenset({"server", "timeout"})
WORD = re.compile(r"\w+")


class NoWorkerAvailable(Exception):
    """No worker can serve this query now; the message says why, for the user.

    `is_busy` is true when every candidate was left out only for being at its concurrency
    cap, so waiting a moment may help.
    """

    def __init__(self, message: str, *, is_busy: bool = False):
        super().__init__(message)
        self.message = message
        self.is_busy = is_busy


def tokens_of(text: str) -> frozenset[str]:
    """Return the words of a text, case-folded, punctuation dropped."""
    return frozenset(WORD.findall(text.casefold()))


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What selection and the clients need to know about a worker, read once from the DB."""

    id: int
    name: str
    query_type: str
    realm: str
    address: str
    wire_format: str
    model: str = ""
    api_key: str = ""
    health_score: float = 100.0
    is_blacklisted: bool = False
    max_concurrency: int = 0
    # Each topic's keywords, each keyword as the words it is made of.
    topics: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = ()

    @property
    def base_url(self) -> str:
        address = self.address.rstrip("/")
        return address if "://" in address else f"http://{address}"

    def matches(self, words: frozenset[str]) -> bool:
        """Return whether any of the worker's topics has a keyword whose words all occur in `words`."""
        return any(all(part in words for part in keyword) for _, keywords in self.topics for keyword in keywords)


@dataclasses.dataclass(frozen=True, slots=True)
class PoolInfo:
    id: int
    name: str
    realm: str
    query_type: str
    strategy: str
    members: tuple[str, ...]  # worker names, sorted
    weights: tuple[int, ...] = ()  # aligned with members

    def weight_table(self) -> dict[str, int]:
        return dict(zip(self.members, self.weights)) if self.weights else {}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The pool configuration at one moment; `version` changes whenever the DB does."""

    workers: dict[str, WorkerInfo]
    pools: tuple[PoolInfo, ...]
    version: str = ""
    by_type: dict[str, tuple[WorkerInfo, ...]] = dataclasses.field(default_factory=dict)
    # Plans depend on configuration only, so each is worked out once per snapshot.
    plans: dict[tuple[str, str, str], Plan] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(cls, workers: Iterable[WorkerInfo], pools: Iterable[PoolInfo], version: str = "") -> Snapshot:
        by_name = {worker.name: worker for worker in workers}
        by_type: dict[str, list[WorkerInfo]] = {}
        for worker in by_name.values():
            by_type.setdefault(worker.query_type, []).append(worker)
        return cls(
            workers=by_name,
            pools=tuple(sorted(pools, key=lambda pool: (pool.name, pool.realm))),
            version=version,
            by_type={query_type: tuple(found) for query_type, found in by_type.items()},
        )

    def serving(self, realm: str, query_type: str | None) -> list[str]:
        """Return the names of healthy workers of `query_type` (any type if None) that serve
        the realm: its own, any-realm workers, and those seated in its pools."""
        seated = {name for pool in self.pools if pool.realm == realm for name in pool.members}
        return sorted(
            worker.name
            for worker in self.workers.values()
            if not worker.is_blacklisted
            and (not query_type or worker.query_type == query_type)
            and (worker.realm in (realm, "") or worker.name in seated)
        )


@dataclasses.dataclass(frozen=True)
class Tier:
    """One place to look for a worker, in the order of the realm rules."""

    workers: tuple[WorkerInfo, ...]
    pool: PoolInfo | None = None
    is_named: bool = False  # model_name named this worker


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where to look for a query's worker, decided from configuration alone."""

    query_type: str
    realm: str
    tiers: tuple[Tier, ...]
    missing_alias: str = ""

    @functools.cached_property
    def worker_names(self) -> list[str]:
        return sorted({worker.name for tier in self.tiers for worker in tier.workers})

    @functools.cached_property
    def pooled(self) -> Plan | None:
        """Return this plan cut down to its pool tiers (None when it has none or only those)."""
        tiers = tuple(tier for tier in self.tiers if tier.pool is not None)
        if not tiers or len(tiers) == len(self.tiers):
            return None
        return Plan(self.query_type, self.realm, tiers)

    @property
    def pools(self) -> list[PoolInfo]:
        return [tier.pool for tier in self.tiers if tier.pool is not None]


@dataclasses.dataclass
class MemberState:
    in_flight: int = 0
    cooldown_until: float = 0.0
    cooldown_kind: str = ""
    latency: float | None = None  # EWMA of time to first byte, seconds
    success: float | None = None  # EWMA of 1 (answered) / 0 (server fault)


@dataclasses.dataclass
class SharedState:
    """The runtime state every process shares (read from Redis in one round trip)."""

    now: float
    members: dict[str, MemberState] = dataclasses.field(default_factory=dict)
    tickets: dict[int, int] = dataclasses.field(default_factory=dict)  # pool id -> round-robin ticket
    affinity: dict[int, str] = dataclasses.field(default_factory=dict)  # pool id -> remembered worker

    def of(self, worker: str) -> MemberState:
        return self.members.get(worker) or MemberState()


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


def in_realm(item_realm: str, realm: str) -> bool:
    return item_realm in ("", realm)


def plan_selection(snapshot: Snapshot, *, query_type: str, realm: str, model_name: str = "") -> Plan:
    """Return the tiers to try for a query in `realm`, following the realm rules in order.

    (a) model_name names a worker: that worker only. (b) model_name is an alias: that alias
    in the realm, then in other realms. (c) the pool of the query's type in the realm, then
    (d) the same alias in other realms, then (e) the healthiest worker of the type in the
    realm, then in any realm. A model_name that is neither is ignored, as classic clients
    send free text there.
    """
    key = (query_type, realm, model_name)
    plan = snapshot.plans.get(key)
    if plan is None:
        plan = snapshot.plans[key] = build_plan(snapshot, query_type=query_type, realm=realm, model_name=model_name)
    return plan


def build_plan(snapshot: Snapshot, *, query_type: str, realm: str, model_name: str) -> Plan:
    named = snapshot.workers.get(model_name) if model_name else None
    if named is not None:
        return Plan(query_type, realm, (Tier((named,), is_named=True),))
    tiers: list[Tier] = []
    missing_alias = ""
    if model_name.startswith("$"):
        pools = [pool for pool in snapshot.pools if pool.name == model_name]
        if not pools:
            return Plan(query_type, realm, (), missing_alias=model_name)
        tiers += pool_tiers(snapshot, sorted(pools, key=lambda pool: realm_rank(pool.realm, realm)))
        return Plan(query_type, realm, tuple(tiers))
    typed = [pool for pool in snapshot.pools if pool.query_type == query_type]
    home = sorted((pool for pool in typed if in_realm(pool.realm, realm)), key=lambda pool: realm_rank(pool.realm, realm))
    seen = {pool.id for pool in home}
    ordered = list(home)
    for pool in home:
        ordered += [other for other in typed if other.name == pool.name and other.id not in seen]
        seen.update(other.id for other in typed if other.name == pool.name)
    tiers += pool_tiers(snapshot, ordered)
    of_type = snapshot.by_type.get(query_type, ())
    local = tuple(worker for worker in of_type if in_realm(worker.realm, realm))
    foreign = tuple(worker for worker in of_type if not in_realm(worker.realm, realm))
    if local:
        tiers.append(Tier(local))
    if foreign:
        tiers.append(Tier(foreign))
    return Plan(query_type, realm, tuple(tiers), missing_alias=missing_alias)


def realm_rank(pool_realm: str, realm: str) -> int:
    """Sort key: the realm's own pool, then an any-realm pool, then other realms' pools."""
    return 0 if pool_realm == realm else 1 if pool_realm == "" else 2


def pool_tiers(snapshot: Snapshot, pools: list[PoolInfo]) -> list[Tier]:
    return [
        Tier(tuple(snapshot.workers[name] for name in pool.members if name in snapshot.workers), pool=pool)
        for pool in pools
    ]


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
    since the state was read. Blacklisted, cooling and full members are skipped; within a
    pool, specializations narrow the candidates and the pool's strategy picks.
    """
    rng = rng or random
    if plan.missing_alias:
        raise NoWorkerAvailable(f"No pool alias named {plan.missing_alias} exists.")
    reasons: list[str] = []
    busy_only = True
    words: frozenset[str] | None = None
    for tier in plan.tiers:
        available, left_out, tier_busy = available_workers(tier.workers, state, exclude, full)
        if not available and tier.pool is None:
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
        raise NoWorkerAvailable(f"No {plan.query_type} worker is available.")
    raise NoWorkerAvailable(
        f"No {plan.query_type} worker is available: {'; '.join(reasons)}.", is_busy=busy_only and bool(reasons)
    )


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
        elif worker.is_blacklisted:
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
        and not worker.is_blacklisted
        and state.of(worker.name).cooldown_kind in LAST_RESORT_KINDS
        and not (worker.max_concurrency and state.of(worker.name).in_flight >= worker.max_concurrency)
    ]
    if not cooling:
        return []
    return [min(cooling, key=lambda worker: (state.of(worker.name).cooldown_until, worker.name))]


def choose(pool: PoolInfo, candidates: list[WorkerInfo], state: SharedState, rng, explore: float) -> tuple[WorkerInfo, str]:
    """Apply the pool's strategy to its candidates; return the choice and the strategy used."""
    strategy = pool.strategy
    if strategy == Strategy.AUTO:
        strategy = resolve_auto(candidates)
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
        return least_busy(candidates, state, rng), strategy
    if strategy == Strategy.LATENCY:
        return fastest(candidates, state, rng, explore), strategy
    if strategy == Strategy.WEIGHTED:
        table = pool.weight_table()
        weights = [table.get(worker.name, 1) for worker in candidates]
        return rng.choices(candidates, weights=weights)[0], strategy
    raise ValueError(f"unknown strategy {strategy!r} on pool {pool.name}")


def resolve_auto(candidates: list[WorkerInfo]) -> str:
    """Return the strategy auto stands for with these healthy members (seed 000)."""
    if len(candidates) <= AUTO_SMALL_POOL:
        return Strategy.HEALTH
    scores = [worker.health_score for worker in candidates]
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
    return best_by(candidates, lambda worker: (-worker.health_score, state.of(worker.name).in_flight), rng)


def least_busy(candidates: list[WorkerInfo], state: SharedState, rng) -> WorkerInfo:
    return best_by(candidates, lambda worker: max(0, state.of(worker.name).in_flight), rng)


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
