"""The pool configuration as selection sees it: workers, pools and their topics, frozen at one
version (pools.config loads it). Configuration only; runtime health lives in pools.state."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pools.selection.planning import Plan

WORD = re.compile(r"\w+")
# pools.models.WireFormat.PEER; selection imports no models.
REMOTE_WIRE_FORMAT = "peer"


def tokens_of(text: str) -> frozenset[str]:
    """Return the words of a text, case-folded, punctuation dropped."""
    return frozenset(WORD.findall(text.casefold()))


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What selection and the clients need to know about a worker, read once from the DB.

    `is_blacklisted` is the operator's switch; the health check's blacklist is runtime
    state (`MemberState.is_blacklisted`).
    """

    id: int
    name: str
    query_type: str
    realm: str
    address: str
    wire_format: str
    model: str = ""
    api_key: str = dataclasses.field(default="", repr=False)  # a secret: never in a log line
    is_blacklisted: bool = False
    max_concurrency: int = 0
    price: float = 0.0
    # Each topic's keywords, each keyword as the words it is made of.
    topics: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = ()

    @property
    def base_url(self) -> str:
        address = self.address.rstrip("/")
        return address if "://" in address else f"http://{address}"

    @property
    def is_remote(self) -> bool:
        """Return whether this is a peer broker (pools.models.WireFormat.PEER), tried only
        after every local worker of the type."""
        return self.wire_format == REMOTE_WIRE_FORMAT

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
    """The pool configuration at one moment; `version` changes whenever the configuration does."""

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
        """Return the names of workers of `query_type` (any type if None) that serve the realm
        (its own, any-realm workers, and those seated in its pools) and that no operator
        blacklisted. The health check's blacklist is runtime state: `pools.health.serving_workers`
        leaves those out too."""
        seated = {name for pool in self.pools if pool.realm == realm for name in pool.members}
        return sorted(
            worker.name
            for worker in self.workers.values()
            if not worker.is_blacklisted
            and (not query_type or worker.query_type == query_type)
            and (worker.realm in (realm, "") or worker.name in seated)
        )
