"""Which realm serves a query type, and whether it has room for one more query."""
from realms.models import Realm
from rentahal.errors import BrokerError, Unavailable
from rentahal.queues import get_queue


def realm_for_query_type(query_type: str) -> Realm:
    """Return the realm whose primary type this is; classic clients never name realms."""
    realm = Realm.objects.filter(query_type=query_type).first()
    if realm is None:
        raise BrokerError(f"No realm serves {query_type} queries.", code="no_realm")
    return realm


def queue_depth(realm: Realm) -> int:
    return get_queue(realm.queue_name).count


def check_room(realm: Realm) -> int:
    """Return the realm's queue depth, refusing when it is at its limit."""
    depth = queue_depth(realm)
    if depth >= realm.queue_limit:
        raise Unavailable(
            f"The {realm.name} realm is full ({depth} queries waiting); try again shortly.", code="realm_full"
        )
    return depth
