"""The realm registry as routing reads it: every realm and its ordered backups, loaded in two
queries and kept per process until its version in Redis changes.

Realms change a few times a day and are read on every query and every connect; the cache
turns those reads into one Redis GET, which routing sends in the same round trip as the
queue-depth read (`realms.routing.route_query`). Cached `Realm` instances are shared by
every thread of the process: read them, never save them.
"""
from __future__ import annotations

import dataclasses
import threading
import uuid

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from realms.models import Realm, RealmBackup
from rentahal.queues import redis_connection

VERSION_KEY = "realms:registry:version"

_cache: dict[str, Registry] = {}
_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Registry:
    version: str
    realms: tuple[Realm, ...]
    # (realm id, query type) → that realm's backups for the type, in order.
    backups: dict[tuple[int, str], tuple[Realm, ...]]

    def primary_for(self, query_type: str) -> Realm | None:
        return next((realm for realm in self.realms if realm.query_type == query_type), None)

    def named(self, name: str) -> Realm | None:
        return next((realm for realm in self.realms if realm.name == name), None)

    def backups_of(self, realm: Realm, query_type: str) -> tuple[Realm, ...]:
        return self.backups.get((realm.pk, query_type), ())


def load_registry(version: str) -> Registry:
    realms = tuple(Realm.objects.order_by("name"))
    by_id = {realm.pk: realm for realm in realms}
    backups: dict[tuple[int, str], list[Realm]] = {}
    for realm_id, query_type, backup_id in RealmBackup.objects.order_by("position", "id").values_list(
        "realm_id", "query_type", "backup_id"
    ):
        backups.setdefault((realm_id, query_type), []).append(by_id[backup_id])
    return Registry(version, realms, {key: tuple(found) for key, found in backups.items()})


def cached_registry() -> Registry | None:
    """Return this process's registry as last loaded, current or not (callers check `version`)."""
    return _cache.get("current")


def registry_at(version: str | None) -> Registry:
    """Return the registry for this version, loading it from the database when it moved on."""
    registry = _cache.get("current")
    if registry is not None and registry.version == version:
        return registry
    if version is None:
        version = seed_version()
    registry = load_registry(version)
    with _lock:
        _cache["current"] = registry
    return registry


def current_registry() -> Registry:
    return registry_at(redis_connection().get(VERSION_KEY))


def seed_version() -> bytes:
    """Give a fresh Redis a version no process can have cached."""
    connection = redis_connection()
    connection.set(VERSION_KEY, uuid.uuid4().hex, nx=True)
    return connection.get(VERSION_KEY)


def registry_changed() -> None:
    """Invalidate every process's registry now and again once the change commits (the second
    bump covers a process that reloaded between the write and the commit)."""
    redis_connection().set(VERSION_KEY, uuid.uuid4().hex)
    transaction.on_commit(lambda: redis_connection().set(VERSION_KEY, uuid.uuid4().hex))


@receiver([post_save, post_delete], sender=Realm)
@receiver([post_save, post_delete], sender=RealmBackup)
def on_registry_saved(sender, **kwargs):
    registry_changed()
