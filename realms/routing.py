"""Which realm serves a query type: its primary realm, else the first backup with room;
and which realm is a user's home."""
import hashlib

# Re-exported: whoever changes backups (realms.actions) finds the loop check beside the rest of
# backup routing; it lives with RealmBackup, whose clean() enforces it without importing routing.
from realms.models import Realm
from realms.registry import Registry, registry_cache
from rentahal.errors import BrokerError, Unavailable
from rentahal.queues import get_queue


class RealmFull(Unavailable):
    """The query type's realm and every backup have as many queries waiting as they take."""

    code = "realm_full"

    def __init__(self, message: str, *, realm: Realm):
        super().__init__(message)
        self.realm = realm


def realm_for_query_type(query_type: str, registry: Registry | None = None) -> Realm:
    """Return the realm whose primary type this is; classic clients never name realms."""
    realm = (registry or registry_cache.current()).primary_for(query_type)
    if realm is None:
        raise BrokerError(f"No realm serves {query_type} queries.", code="no_realm")
    return realm


def queue_depth(realm: Realm) -> int:
    return get_queue(realm.queue_name).count


def queries_in_flight(realm: Realm) -> int:
    """Return how many of the realm's jobs a worker is running now (RQ's started registry).

    Read without RQ's cleanup: handing abandoned jobs on is the reconciler's work
    (`realms.reconcile`), not a side effect of a scrape or a dashboard's tick."""
    return get_queue(realm.queue_name).started_job_registry.get_job_count(cleanup=False)


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
        raise RealmFull(f"The {primary.name} realm is full ({depth} queries waiting); try again shortly.", realm=primary)
    names = ", ".join(realm.name for realm in backups)
    raise RealmFull(
        f"The {primary.name} realm is full and so are its backups ({names}); try again shortly.", realm=primary
    )


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
