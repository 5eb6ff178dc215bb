"""Where to look for a query's worker, worked out from configuration alone and kept per
snapshot: the tiers of the realm rules, in the order they are tried."""
from __future__ import annotations

import dataclasses
import functools

from pools.providers import HOSTED_WIRE_FORMATS
from pools.selection.snapshot import PoolInfo, Snapshot, WorkerInfo


@dataclasses.dataclass(frozen=True)
class Tier:
    """One place to look for a worker, in the order of the realm rules."""

    workers: tuple[WorkerInfo, ...]
    pool: PoolInfo | None = None
    is_named: bool = False  # model_name named this worker
    is_remote: bool = False  # peer brokers, tried after every local worker of the type


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where to look for a query's worker, decided from configuration alone."""

    query_type: str
    realm: str
    tiers: tuple[Tier, ...]
    missing_alias: str = ""
    hosted_type: str = ""  # a model type naming a hosted provider (claude, huggingface); else blank

    @property
    def wanted(self) -> str:
        """Return what the query needs, as a refusal names it: "chat worker", or with its provider."""
        if self.hosted_type:
            return f"{self.query_type} worker for model type {self.hosted_type}"
        return f"{self.query_type} worker"

    @functools.cached_property
    def worker_names(self) -> list[str]:
        return sorted({worker.name for tier in self.tiers for worker in tier.workers})

    @functools.cached_property
    def pooled(self) -> Plan | None:
        """Return this plan cut down to its pool tiers (None when it has none or only those)."""
        tiers = tuple(tier for tier in self.tiers if tier.pool is not None)
        if not tiers or len(tiers) == len(self.tiers):
            return None
        return Plan(self.query_type, self.realm, tiers, hosted_type=self.hosted_type)

    @property
    def pools(self) -> list[PoolInfo]:
        return [tier.pool for tier in self.tiers if tier.pool is not None]

    @functools.cached_property
    def local(self) -> Plan:
        """Return this plan without peer brokers: a query that already crossed as many
        brokers as it may is served here or not at all."""
        tiers = tuple(
            dataclasses.replace(tier, workers=tuple(worker for worker in tier.workers if not worker.is_remote))
            for tier in self.tiers
            if not tier.is_remote
        )
        return Plan(self.query_type, self.realm, tiers, self.missing_alias)

    @functools.cached_property
    def remote(self) -> Plan:
        """Return this plan cut down to its peer brokers: a query its realm had no room for
        leaves the local workers to the queries waiting for them."""
        tiers = tuple(
            dataclasses.replace(tier, workers=peers)
            for tier in self.tiers
            if (peers := tuple(worker for worker in tier.workers if worker.is_remote))
        )
        return Plan(self.query_type, self.realm, tiers, self.missing_alias)


def in_realm(item_realm: str, realm: str) -> bool:
    return item_realm in ("", realm)


def plan_selection(snapshot: Snapshot, *, query_type: str, realm: str, model_name: str = "", model_type: str = "") -> Plan:
    """Return the tiers to try for a query in `realm`, following the realm rules in order.

    (a) model_name names a worker: that worker only; or the model some workers of the type
    serve: those (an OpenAI client names models, not workers). (b) model_name is an alias: that alias
    in the realm, then in other realms. (c) the pool of the query's type in the realm, then
    (d) the same alias in other realms, then (e) the healthiest worker of the type in the
    realm, then in any realm, then (f) the peer brokers that advertised the type. A
    model_name that is neither is ignored, as classic clients send free text there. A pool
    may seat a peer broker beside its local members. A model_type naming a hosted provider
    (`claude`, `huggingface`) keeps only the workers of its wire format in every tier, so
    such a query is never served by a local model.
    """
    hosted_type = model_type if model_type in HOSTED_WIRE_FORMATS else ""
    key = (query_type, realm, model_name, hosted_type)
    plan = snapshot.plans.get(key)
    if plan is None:
        plan = build_plan(snapshot, query_type=query_type, realm=realm, model_name=model_name)
        if hosted_type:
            plan = only_hosted(plan, hosted_type)
        snapshot.plans[key] = plan
    return plan


def only_hosted(plan: Plan, hosted_type: str) -> Plan:
    """Return the plan cut down to the workers of the hosted provider's wire format."""
    wire_format = HOSTED_WIRE_FORMATS[hosted_type]
    tiers = []
    for tier in plan.tiers:
        workers = tuple(worker for worker in tier.workers if worker.wire_format == wire_format)
        if workers:
            tiers.append(dataclasses.replace(tier, workers=workers))
    return dataclasses.replace(plan, tiers=tuple(tiers), hosted_type=hosted_type)


def build_plan(snapshot: Snapshot, *, query_type: str, realm: str, model_name: str) -> Plan:
    named = snapshot.workers.get(model_name) if model_name else None
    if named is not None:
        return Plan(query_type, realm, (Tier((named,), is_named=True),))
    serving = serving_model(snapshot, model_name, query_type)
    if serving:
        return Plan(query_type, realm, (Tier(serving),))
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
    remote = tuple(worker for worker in of_type if worker.is_remote)
    local = tuple(worker for worker in of_type if in_realm(worker.realm, realm) and not worker.is_remote)
    foreign = tuple(worker for worker in of_type if not in_realm(worker.realm, realm) and not worker.is_remote)
    if local:
        tiers.append(Tier(local))
    if foreign:
        tiers.append(Tier(foreign))
    if remote:
        tiers.append(Tier(remote, is_remote=True))
    return Plan(query_type, realm, tuple(tiers), missing_alias=missing_alias)


def serving_model(snapshot: Snapshot, model_name: str, query_type: str) -> tuple[WorkerInfo, ...]:
    """Return the workers of the type that serve the model named, in any realm."""
    if not model_name or model_name.startswith("$"):
        return ()
    return tuple(worker for worker in snapshot.by_type.get(query_type, ()) if worker.model == model_name)


def realm_rank(pool_realm: str, realm: str) -> int:
    """Sort key: the realm's own pool, then an any-realm pool, then other realms' pools."""
    return 0 if pool_realm == realm else 1 if pool_realm == "" else 2


def pool_tiers(snapshot: Snapshot, pools: list[PoolInfo]) -> list[Tier]:
    return [
        Tier(tuple(snapshot.workers[name] for name in pool.members if name in snapshot.workers), pool=pool)
        for pool in pools
    ]
