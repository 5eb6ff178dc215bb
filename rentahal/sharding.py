"""Which database holds a user's rows.

Per-user rows (users, queries, charges) live on the shard that the shard map names for
the first two hex characters of the user's guid. Query ids carry the same two characters,
so a job that holds only a query id finds the right shard without a lookup.
"""
import uuid

from django.conf import settings

SHARDED_MODELS = frozenset({"accounts.user", "accounts.query", "accounts.charge", "accounts.systemtotals"})


def is_sharded(model) -> bool:
    return model._meta.label_lower in SHARDED_MODELS


def shard_aliases() -> list[str]:
    """Return every database alias that holds per-user rows, `default` when unsharded."""
    return [alias for alias in settings.DATABASES if alias.startswith("shard")] or ["default"]


def guid_prefix(guid: str) -> str:
    return str(guid)[:2].lower()


def shard_for_guid(guid: str) -> str:
    """Return the database alias holding the rows of the user with this guid."""
    aliases = shard_aliases()
    return aliases[int(guid_prefix(guid), 16) % len(aliases)]


def new_query_id(user_guid: str) -> uuid.UUID:
    """Return a fresh query id whose first byte is the user's guid prefix."""
    raw = bytearray(uuid.uuid4().bytes)
    raw[0] = int(guid_prefix(user_guid), 16)
    return uuid.UUID(bytes=bytes(raw))


def shard_for_query(query_id) -> str:
    return shard_for_guid(str(query_id))
