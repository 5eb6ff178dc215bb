"""The pool configuration as selection sees it: a snapshot of workers, pools and
specializations, read in four queries and kept per process until its version changes.

Only a save or delete of one of those rows changes the version; runtime health (scores and
the health rules' blacklist) lives in Redis (pools.state) and never does."""
from __future__ import annotations

from django.conf import settings
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
            is_blacklisted=worker.is_blacklisted,
            # A worker without its own cap gets the default one, so a server that hangs
            # holds at most that many realm-worker slots (README.md, Fair share).
            max_concurrency=worker.max_concurrency or settings.RENTAHAL_DEFAULT_WORKER_CONCURRENCY,
            price=float(worker.price),
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


@receiver([post_save, post_delete], sender=Worker)
@receiver([post_save, post_delete], sender=PoolAlias)
@receiver([post_save, post_delete], sender=PoolMember)
@receiver([post_save, post_delete], sender=Specialization)
def on_config_saved(sender, **kwargs):
    snapshot_cache.changed()
