"""What operators see of a realm: its workers, pools, queue, backups, metrics and advice."""
from django.db.models import Q

from pools.health import serving_workers
from pools.models import PoolAlias, Worker
from pools.status import worker_frames
from realms.models import Realm, RealmBackup, ScalingAdvice
from realms.routing import queries_in_flight, queue_depth
from rentahal import metrics


def available_workers(realm: Realm, query_type: str | None = None) -> list[str]:
    """Return the names of healthy workers that serve `query_type` (else its primary type) in the realm.

    Read from the process's pool snapshot and the runtime health in Redis: accepting a query
    reports this count, so it costs no database round trip while the pool configuration is
    unchanged.
    """
    return serving_workers(realm.name, query_type or realm.query_type)


def realm_workers(realm: Realm) -> list[dict]:
    """Return the workers registered in the realm or seated in its pools."""
    workers = Worker.objects.filter(Q(realm=realm.name) | Q(pools__realm=realm.name)).distinct()
    return worker_frames(list(workers), with_addresses=True)


def backups_of(realm: Realm) -> dict[str, list[str]]:
    backups: dict[str, list[str]] = {}
    for row in RealmBackup.objects.filter(realm=realm).select_related("backup").order_by("query_type", "position", "id"):
        backups.setdefault(row.query_type, []).append(row.backup.name)
    return backups


def realm_status(realm: Realm) -> dict:
    """Return the realm as the admin API lists it."""
    workers = len(available_workers(realm))
    advice = ScalingAdvice.objects.filter(realm=realm).first()
    return {
        "name": realm.name,
        "primary_query_type": realm.query_type,
        "min_workers": realm.min_workers,
        "max_workers": realm.max_workers,
        "queue_limit": realm.queue_limit,
        "queue_depth": queue_depth(realm),
        "backups": backups_of(realm),
        "workers": realm_workers(realm),
        "pools": sorted(PoolAlias.objects.filter(realm=realm.name).values_list("name", flat=True)),
        "metrics": metrics.realm_metrics(realm.name, workers=workers),
        "scaling_advice": advice.as_data() if advice else None,
    }


def workers_by_realm() -> dict[str, int]:
    return {realm.name: len(available_workers(realm)) for realm in Realm.objects.all()}


def realm_gauges() -> dict[str, tuple[int, int, int]]:
    """Return {realm: (available workers, queue depth, queries in flight)} for the /metrics
    scrape and the admin's dashboard."""
    return {
        realm.name: (len(available_workers(realm)), queue_depth(realm), queries_in_flight(realm))
        for realm in Realm.objects.all()
    }


def summary() -> dict:
    return metrics.summary_metrics(workers_by_realm())
