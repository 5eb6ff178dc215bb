"""The pool configuration as selection sees it: a snapshot of workers, pools and
specializations, read in four queries and kept per process until its version changes."""
from __future__ import annotations

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from pools.models import PoolAlias, PoolMember, Specialization, Worker
from pools.selection import PoolInfo, Snapshot, WorkerInfo, tokens_of
from rentahal.versioned_cache import VersionedCache


def load_snapshot(version: str) -> Snapshot:
    """Read the whole pool configuration from the database (four queries)."""
    topics: dict[int, list[tuple[str, tuple[tuple[str, ...], ...]]]] = {}
    for worker_id, topic, keywords in Specialization.objects.values_list("worker_id", "topic", "keywords"):
        words = tuple(tuple(sorted(tokens_of(word))) for word in keywords if isinstance(word, str) and tokens_of(word))
        topics.setdefault(worker_id, []).append((topic, words))
    workers = [
        WorkerInfo(
            id=worker.id,
            name=worker.name,
            query_type=worker.query_type,
            realm=worker.realm,
            address=worker.address,
            wire_format=worker.wire_format,
            model=worker.model,
            api_key=worker.api_key,
            health_score=worker.health_score,
            is_blacklisted=worker.is_blacklisted,
            max_concurrency=worker.max_concurrency,
            topics=tuple(topics.get(worker.id, ())),
        )
        for worker in Worker.objects.all()
    ]
    seats: dict[int, list[tuple[str, int]]] = {}
    for pool_id, name, weight in PoolMember.objects.values_list("pool_id", "worker__name", "weight"):
        seats.setdefault(pool_id, []).append((name, weight))
    pools = []
    for pool in PoolAlias.objects.all():
        members = sorted(seats.get(pool.id, []))
        pools.append(
            PoolInfo(
                id=pool.id,
                name=pool.name,
                realm=pool.realm,
                query_type=pool.query_type,
                strategy=pool.strategy,
                members=tuple(name for name, _ in members),
                weights=tuple(weight for _, weight in members),
            )
        )
    return Snapshot.build(workers, pools, version)


snapshot_cache: VersionedCache[Snapshot] = VersionedCache("pools:config:version", load_snapshot)


def serving_workers(realm: str, query_type: str | None) -> list[str]:
    """Return the names of healthy workers that serve `query_type` (any type if None) in the realm.

    Read from the process's pool snapshot: accepting a query reports this count in
    `queue_update`, so it costs no database round trip while the pool configuration is
    unchanged.
    """
    return snapshot_cache.current().serving(realm, query_type)


@receiver([post_save, post_delete], sender=Worker)
@receiver([post_save, post_delete], sender=PoolAlias)
@receiver([post_save, post_delete], sender=PoolMember)
@receiver([post_save, post_delete], sender=Specialization)
def on_config_saved(sender, **kwargs):
    snapshot_cache.changed()
