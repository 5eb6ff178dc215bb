"""Which database holds a user's rows, and the fence that keeps writes off a moving prefix.

Per-user rows (of the models that declare it, see `rentahal.sharded_models`) live on the
shard that the shard map names for the first two hex characters of the user's guid. Query ids carry the same two characters,
so a job that holds only a query id finds the right shard without a lookup of the query.

The map lives on `default` (`rentahal.models.ShardMapEntry`). Each process caches it and
trusts the cache while a version token agrees: reads compare the token kept in Redis (one
GET, no database round trip); writes compare the token in Postgres after taking the
prefix's fence, because only that read is ordered after a switch (see `writing_for`).
"""
import contextlib
import logging
import threading
import uuid

import redis
from django.conf import settings
from django.db import OperationalError, connections, transaction

from rentahal.errors import Unavailable

logger = logging.getLogger(__name__)

PREFIXES = [f"{number:02x}" for number in range(256)]

# Advisory lock keys on `default`: (class, prefix number) fences one prefix; (class, hash)
# serialises a check that spans shards, such as nickname uniqueness.
FENCE_LOCK_CLASS = 0x5248_0001
SPAN_LOCK_CLASS = 0x5248_0002
# How long a writer waits at a closed fence before giving up with a retryable error.
WRITER_FENCE_TIMEOUT_MS = 10_000
# SQLSTATE of a lock wait that ran out (lock_timeout): on the fence, a mover holds it.
LOCK_NOT_AVAILABLE = "55P03"
TOKEN_KEY = "rentahal:shard-map:token"
# The token in Redis expires and readers then seed it again from Postgres, so a switch whose
# token was never published (its mover killed between commit and publish, or Redis
# unreachable then) reaches every process within this time even if nobody resumes the move.
TOKEN_TTL_SECONDS = 10


class ShardMoving(Unavailable):
    code = "shard_moving"


class UnknownShard(Exception):
    """The shard map names a database alias that is not configured."""


def shard_aliases() -> list[str]:
    """Return every database alias that holds per-user rows, `default` when unsharded."""
    return [alias for alias in settings.DATABASES if alias.startswith("shard")] or ["default"]


def has_shards() -> bool:
    return shard_aliases() != ["default"]


def guid_prefix(guid) -> str:
    return str(guid)[:2].lower()


def is_valid_prefix(prefix: str) -> bool:
    return isinstance(prefix, str) and len(prefix) == 2 and all(char in "0123456789abcdef" for char in prefix)


def default_shard_for_prefix(prefix: str) -> str:
    """Return the shard an unmapped prefix is given: the prefix number modulo the shard count."""
    aliases = shard_aliases()
    return aliases[int(prefix, 16) % len(aliases)]


def new_query_id(user_guid: str) -> uuid.UUID:
    """Return a fresh query id whose first byte is the user's guid prefix."""
    raw = bytearray(uuid.uuid4().bytes)
    raw[0] = int(guid_prefix(user_guid), 16)
    return uuid.UUID(bytes=bytes(raw))


# -- the cached map -----------------------------------------------------------------------

class _MapCache:
    """The shard map as last read by this process, and the token it was read at."""

    def __init__(self):
        self.token: str | None = None
        self.entries: dict[str, str] = {}
        self.lock = threading.Lock()


_cache = _MapCache()
_redis_client = None


def _redis():
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    return _redis_client


def read_token() -> str:
    """Return the map's version token from Postgres, creating a random one on first use.

    A fresh (or emptied) map table gets a token no process can have cached.
    """
    from rentahal.models import ShardMapVersion

    token = ShardMapVersion.objects.using("default").filter(pk=1).values_list("token", flat=True).first()
    if token is None:
        table = ShardMapVersion._meta.db_table
        with connections["default"].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (id, token) VALUES (1, %s) ON CONFLICT (id) DO NOTHING", [uuid.uuid4().hex]
            )
            cursor.execute(f"SELECT token FROM {table} WHERE id = 1")
            token = cursor.fetchone()[0]
    return token


def _shared_token() -> str:
    """Return the token from Redis, seeding it from Postgres when Redis has none.

    Readers seed with SET NX and the mover sets unconditionally after its commit, so a
    reader that read an old token can never overwrite a newer one; both set it to expire
    (TOKEN_TTL_SECONDS), so an old token seeded just before a switch whose publish was lost
    lives no longer than that.
    """
    try:
        token = _redis().get(TOKEN_KEY)
        if token is not None:
            return token.decode()
        token = read_token()
        _redis().set(TOKEN_KEY, token, nx=True, ex=TOKEN_TTL_SECONDS)
        return token
    except redis.RedisError:
        logger.warning("Redis unreachable; reading the shard map token from Postgres")
        return read_token()


def publish_token(token: str) -> None:
    """Tell every process the map changed (called by the mover after its commit)."""
    try:
        _redis().set(TOKEN_KEY, token, ex=TOKEN_TTL_SECONDS)
    except redis.RedisError:
        logger.warning("could not publish shard map token to Redis; processes see it on their next write")


def _entries_at(token: str) -> dict[str, str]:
    """Return the cached entries, reloading them if the token moved on."""
    if _cache.token != token:
        from rentahal.models import ShardMapEntry

        entries = dict(ShardMapEntry.objects.using("default").values_list("prefix", "shard"))
        with _cache.lock:
            _cache.entries, _cache.token = entries, token
    return _cache.entries


def _record_prefix(prefix: str) -> str:
    """Record the deterministic shard of an unmapped prefix; return what the map then says."""
    from rentahal.models import ShardMapEntry

    table = ShardMapEntry._meta.db_table
    with connections["default"].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (prefix, shard, updated_at) VALUES (%s, %s, now()) ON CONFLICT (prefix) DO NOTHING",
            [prefix, default_shard_for_prefix(prefix)],
        )
        cursor.execute(f"SELECT shard FROM {table} WHERE prefix = %s", [prefix])
        shard = cursor.fetchone()[0]
    with _cache.lock:
        _cache.entries = {**_cache.entries, prefix: shard}
    return shard


def _lookup(prefix: str, token: str) -> str:
    shard = _entries_at(token).get(prefix) or _record_prefix(prefix)
    if shard not in settings.DATABASES:
        raise UnknownShard(f"The shard map names '{shard}' for prefix {prefix}, but no such database is configured.")
    return shard


def shard_for_prefix(prefix: str, *, fresh: bool = False) -> str:
    """Return the alias holding this prefix; `fresh` checks the token in Postgres, not Redis."""
    if not has_shards():
        return "default"
    return _lookup(prefix, read_token() if fresh else _shared_token())


def shard_for_guid(guid: str) -> str:
    """Return the database alias holding the rows of the user with this guid."""
    return shard_for_prefix(guid_prefix(guid))


def shard_for_query(query_id) -> str:
    return shard_for_guid(str(query_id))


def forget_cached_map() -> None:
    with _cache.lock:
        _cache.token, _cache.entries = None, {}


# -- the write fence ----------------------------------------------------------------------

@contextlib.contextmanager
def writing_for(key):
    """Yield the alias for writing this guid's (or query id's) rows, inside one durable
    transaction on it, with the prefix's fence held shared for the whole transaction.

    The mover takes the same fence exclusively for its switch: it waits until writers in
    flight have committed, copies what they wrote, switches the map and releases. A writer
    that meets the closed fence waits (at most WRITER_FENCE_TIMEOUT_MS, then ShardMoving)
    and then reads the token again in a new statement, so it sees the switch and writes to
    the new shard. The token must be read after the lock is granted: a statement's snapshot
    is taken when it starts, before any lock wait.
    """
    if not has_shards():
        with transaction.atomic(using="default", durable=True):
            yield "default"
        return
    prefix = guid_prefix(key)
    with transaction.atomic(using="default"):
        with connections["default"].cursor() as cursor:
            try:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true), pg_advisory_xact_lock_shared(%s, %s)",
                    [f"{WRITER_FENCE_TIMEOUT_MS}ms", FENCE_LOCK_CLASS, int(prefix, 16)],
                )
            except OperationalError as exc:
                raise_shard_moving_if_fenced(exc)
                raise
        alias = _lookup(prefix, read_token())
        with transaction.atomic(using=alias, durable=True):
            yield alias


@contextlib.contextmanager
def writing_for_each(keys):
    """Yield {alias: [index, ...]}: which shard holds the rows of each of these guids (or
    query ids), given as their positions in `keys`, with every prefix's fence held shared
    until the block ends.

    Made for batch writes, which write each shard with ONE statement and no transaction:
    autocommit makes a single statement atomic, and it commits before the block ends and
    the fences are released, so a mover still sees every write (see `writing_for`). The
    fences are taken in one statement, in prefix order (no deadlock between two batches
    and the mover, which holds one fence at a time); the token is read in the next, after
    the locks. A closed fence fails the whole batch with ShardMoving before anything is
    written. Unsharded, nothing is taken and no round trip is spent.
    """
    if not has_shards():
        check_autocommit("default")
        yield {"default": list(range(len(keys)))}
        return
    prefixes = [guid_prefix(key) for key in keys]
    fences = sorted({int(prefix, 16) for prefix in prefixes})
    with transaction.atomic(using="default"):
        with connections["default"].cursor() as cursor:
            try:
                cursor.execute(
                    "SELECT set_config('lock_timeout', %s, true), "
                    + ", ".join(["pg_advisory_xact_lock_shared(%s, %s)"] * len(fences)),
                    [f"{WRITER_FENCE_TIMEOUT_MS}ms", *(value for fence in fences for value in (FENCE_LOCK_CLASS, fence))],
                )
            except OperationalError as exc:
                raise_shard_moving_if_fenced(exc)
                raise
        token = read_token()
        by_alias: dict[str, list[int]] = {}
        for index, prefix in enumerate(prefixes):
            by_alias.setdefault(_lookup(prefix, token), []).append(index)
        for alias in by_alias:
            check_autocommit(alias)
        yield by_alias


def raise_shard_moving_if_fenced(exc: OperationalError) -> None:
    """Raise ShardMoving if the fence's lock wait timed out: a mover holds the prefix. Any
    other error (a Postgres restart dropped the connection) is left to the caller as the
    store outage it is, which writers try again (`rentahal.errors.DATABASE_OUTAGES`)."""
    if getattr(exc.__cause__, "sqlstate", None) == LOCK_NOT_AVAILABLE:
        raise ShardMoving("Your data is being moved between databases; try again in a moment.") from exc


def check_autocommit(alias: str) -> None:
    """Refuse to write a batch inside a transaction, where it would commit after its fences
    are released (the batch counterpart of `durable=True`, and like it, blind to the
    transaction a Django TestCase wraps each test in)."""
    connection = connections[alias]
    if connection.in_atomic_block and not connection.atomic_blocks[-1]._from_testcase:
        raise transaction.TransactionManagementError(
            f"A batch write on {alias} must not run inside a transaction: each statement commits on its own."
        )


def close_fence(prefix: str, *, timeout_ms: int) -> None:
    """Take the prefix's fence exclusively until the enclosing `default` transaction ends.

    Waits for writers in flight (at most `timeout_ms`); writers that come later wait here.
    """
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT set_config('lock_timeout', %s, true), pg_advisory_xact_lock(%s, %s)",
            [f"{timeout_ms}ms", FENCE_LOCK_CLASS, int(prefix, 16)],
        )


@contextlib.contextmanager
def serialised_across_shards(key: str):
    """Run a check-then-write that spans shards one at a time per key (a `default` lock).

    Unsharded, the database's own constraints already decide, so nothing is taken.
    """
    if not has_shards():
        yield
        return
    with transaction.atomic(using="default"):
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [SPAN_LOCK_CLASS, key])
        yield
