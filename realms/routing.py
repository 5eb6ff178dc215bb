"""Which realm serves a query type: its primary realm, else the first backup with room;
and which realm is a user's home."""
import hashlib
from collections import defaultdict

from realms.models import Realm, RealmBackup
from realms.registry import Registry, registry_cache
from rentahal.errors import BrokerError, Unavailable
from rentahal.queues import get_queue


def realm_for_query_type(query_type: str, registry: Registry | None = None) -> Realm:
    """Return the realm whose primary type this is; classic clients never name realms."""
    realm = (registry or registry_cache.current()).primary_for(query_type)
    if realm is None:
        raise BrokerError(f"No realm serves {query_type} queries.", code="no_realm")
    return realm


def queue_depth(realm: Realm) -> int:
    return get_queue(realm.queue_name).count


def route_query(query_type: str) -> tuple[Realm, int]:
    """Return the realm that takes this query and its queue depth before it.

    The primary realm takes it while it has room; otherwise its backups are tried in
    order, each backup's own backups right after it. The registry's version and the
    primary's depth come back in one Redis round trip. The depth check and the enqueue
    are not atomic, so under a burst a realm may overshoot its limit by the burst's size.
    """
    registry = registry_cache.last_loaded()
    guess = registry.primary_for(query_type) if registry is not None else None
    with registry_cache.client().pipeline(transaction=False) as pipeline:
        pipeline.get(registry_cache.version_key)
        if guess is not None:
            pipeline.llen(get_queue(guess.queue_name).key)
        version, *depths = pipeline.execute()
    registry = registry_cache.at(version)
    primary = realm_for_query_type(query_type, registry)
    depth = depths[0] if depths and primary is guess else queue_depth(primary)
    if depth < primary.queue_limit:
        return primary, depth
    backups = backup_chain(primary, query_type, registry)
    for realm in backups:
        depth = queue_depth(realm)
        if depth < realm.queue_limit:
            return realm, depth
    if not backups:
        raise Unavailable(
            f"The {primary.name} realm is full ({depth} queries waiting); try again shortly.", code="realm_full"
        )
    names = ", ".join(realm.name for realm in backups)
    raise Unavailable(
        f"The {primary.name} realm is full and so are its backups ({names}); try again shortly.",
        code="realm_full",
    )


def backup_edges(query_type: str, *, exclude_realm: Realm | None = None, exclude_pk=None) -> dict[int, list[Realm]]:
    """Return each realm's ordered backups for the query type, as realm id → backups."""
    rows = RealmBackup.objects.filter(query_type=query_type).select_related("backup").order_by("position", "id")
    if exclude_realm is not None:
        rows = rows.exclude(realm=exclude_realm)
    if exclude_pk is not None:
        rows = rows.exclude(pk=exclude_pk)
    edges: dict[int, list[Realm]] = defaultdict(list)
    for row in rows:
        edges[row.realm_id].append(row.backup)
    return edges


def backup_chain(realm: Realm, query_type: str, registry: Registry | None = None) -> list[Realm]:
    """Return the realms to try after `realm` for this type: depth first, each once."""
    registry = registry or registry_cache.current()
    chain: list[Realm] = []
    seen = {realm.pk}

    def visit(current: Realm) -> None:
        for backup in registry.backups_of(current, query_type):
            if backup.pk not in seen:
                seen.add(backup.pk)
                chain.append(backup)
                visit(backup)

    visit(realm)
    return chain


def find_backup_loop(realm: Realm, query_type: str, backups: list[Realm], *, replace: bool = False, exclude=None) -> list[str]:
    """Return the realm names of a loop that giving `realm` these backups would make, else [].

    With `replace`, the backups replace the realm's current ones for the type; otherwise
    they are added (one new row, as the admin saves them).
    """
    edges = backup_edges(query_type, exclude_realm=realm if replace else None, exclude_pk=exclude)
    edges[realm.pk] = [*edges.get(realm.pk, []), *backups]
    names = {realm.pk: realm.name}
    for targets in edges.values():
        names.update((target.pk, target.name) for target in targets)

    def walk(current_id: int, path: list[int]) -> list[int]:
        for target in edges.get(current_id, []):
            if target.pk == realm.pk:
                return [*path, target.pk]
            if target.pk not in path:
                found = walk(target.pk, [*path, target.pk])
                if found:
                    return found
        return []

    loop = walk(realm.pk, [realm.pk])
    return [names[pk] for pk in loop]


def home_realm(guid: str, realms: list[Realm]) -> Realm:
    """Return the user's home realm by rendezvous hashing of the guid.

    The same guid always lands in the same realm, and adding or removing a realm moves
    only the users of that realm.
    """
    if not realms:
        raise BrokerError("There are no realms.", code="no_realm")
    return max(realms, key=lambda realm: hashlib.sha256(f"{realm.name}:{guid}".encode()).digest())


def home_realm_of(guid: str) -> Realm:
    return home_realm(guid, list(registry_cache.current().realms))


def find_realm(name: str) -> Realm:
    """Return the realm of this name, or refuse naming it."""
    realm = registry_cache.current().named(name)
    if realm is None:
        raise BrokerError(f"Unknown realm '{name[:64]}'.", code="unknown_realm")
    return realm
