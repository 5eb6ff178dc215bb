"""The realm registry as routing reads it: every realm and its ordered backups, loaded in two
queries and kept per process until its version in Redis changes.

Realms change a few times a day and are read on every query and every connect; the cache
turns those reads into one Redis GET, which routing sends in the same round trip as the
queue-depth read (`realms.routing.route_query`). Cached `Realm` instances are shared by
every thread of the process: read them, never save them.
"""
from __future__ import annotations

import dataclasses

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from realms.models import Realm, RealmBackup
from rentahal.versioned_cache import VersionedCache


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


registry_cache: VersionedCache[Registry] = VersionedCache("realms:registry:version", load_registry)


@receiver([post_save, post_delete], sender=Realm)
@receiver([post_save, post_delete], sender=RealmBackup)
def on_registry_saved(sender, **kwargs):
    registry_cache.changed()
