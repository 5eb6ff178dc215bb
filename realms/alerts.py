"""Tell sysops when a realm loses its last serving worker, and when it has one again
(`realm_alert`, docs/protocol.md §1).

The pools app knows workers, not realms (a worker of no realm serves them all), so it only
announces that health may have changed (`pools.health.health_changed`: after each health
round, and when a query's outcome blacklists a worker); this module, connected to it when the
realms app is ready, looks at every realm. Each realm's last known state is kept in Redis and
swapped atomically, so only a change is pushed, once, whichever process saw it first. A realm
seen for the first time (a new realm, or after Redis lost its keys) counts as having been
served: one that starts with no worker is announced once, one that is served is not.
"""
from __future__ import annotations

from django.conf import settings
from django.dispatch import receiver

from pools.health import health_changed, serving_workers
from realms.registry import registry_cache
from rentahal.pushes import alert_sysops
from rentahal.queues import client_for_url

SERVING = "serving"
NO_HEALTHY_WORKER = "no_healthy_worker"


def service_key(realm: str) -> str:
    return f"realms:service:{realm}"


def alert_realm_changes() -> list[tuple[str, str]]:
    """Push a `realm_alert` to sysops for every realm whose service changed since it was last
    looked at; return the (realm, new state) pairs pushed."""
    now = {
        realm.name: SERVING if serving_workers(realm.name, None) else NO_HEALTHY_WORKER
        for realm in registry_cache.current().realms
    }
    pipe = client_for_url(settings.REDIS_URL, decode_responses=True).pipeline(transaction=False)
    for realm, service in now.items():
        pipe.set(service_key(realm), service, get=True)
    changes = [
        (realm, service)
        for (realm, service), before in zip(now.items(), pipe.execute())
        if service != (before or SERVING)
    ]
    for realm, service in changes:
        alert_sysops({"type": "realm_alert", "realm": realm, "state": service})
    return changes


@receiver(health_changed)
def on_health_changed(sender, **kwargs):
    alert_realm_changes()
