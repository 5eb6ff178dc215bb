"""Moving one guid prefix between shards while the broker runs, resumably.

A move is copying → switched → cleaned (or rolled_back), recorded in `ShardMove` on
`default` before each step begins, so a move killed anywhere can be resumed or rolled back:

1. copying: sync the prefix's rows from source to target while writers keep writing to
   the source (the map still names it). Sync makes the target's rows of the prefix equal
   to the source's, so rerunning it after a kill is harmless.
2. switch: take the prefix's fence exclusively (writers wait, see
   `rentahal.sharding.writing_for`), sync again (only what changed since step 1: queries
   accepted, finished or charged meanwhile, user totals), point the map at the target and
   change the version token, all in one `default` transaction. The fence is held for that
   delta sync only; writers resume on the target the moment it commits.
3. clean: delete the prefix's rows from the source. No writer resolves to the source any
   more, so this needs no fence.

`SystemTotals` rows are per-shard counters summed by `accounts.billing.system_totals`;
a move leaves them alone, so the system totals are the same before and after.
"""
import contextlib
import logging
import time
import uuid

from django.db import DatabaseError, IntegrityError, connections, transaction

from accounts.models import Charge, Query, User
from rentahal.models import ShardMapEntry, ShardMapVersion, ShardMove
from rentahal.sharding import (
    close_fence,
    forget_cached_map,
    has_shards,
    is_valid_prefix,
    publish_token,
    shard_aliases,
    shard_for_prefix,
)

logger = logging.getLogger(__name__)

# The mover waits this long for writers in flight to drain before the switch.
MOVER_FENCE_TIMEOUT_MS = 30_000
# Between the switch and deleting the old rows, readers whose cached map predates the
# switch finish reading from the source.
CLEAN_GRACE_SECONDS = 0.5
BATCH = 200
MOVER_LOCK_CLASS = 0x5248_0003


class MoveError(Exception):
    """A move refused or stopped, with a message for the operator; the map is unchanged."""


def no_progress(message: str) -> None:
    logger.info("%s", message)


# -- validation ---------------------------------------------------------------------------

def check_prefix(prefix: str) -> str:
    prefix = (prefix or "").lower()
    if not is_valid_prefix(prefix):
        raise MoveError(f"'{prefix}' is not a guid prefix: give two hex characters, such as 3f.")
    return prefix


def check_shard(alias: str) -> str:
    if not has_shards():
        raise MoveError("No shards are configured (SHARD_URLS is empty); every user lives on default.")
    if alias not in shard_aliases():
        raise MoveError(f"Unknown shard '{alias}'. Configured shards: {', '.join(shard_aliases())}.")
    return alias


def check_reachable(alias: str) -> None:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        connections[alias].close()
        raise MoveError(f"Shard {alias} is unreachable: {str(exc).strip()}") from None


def active_move(prefix: str) -> ShardMove | None:
    return ShardMove.objects.using("default").filter(prefix=prefix, state__in=ShardMove.ACTIVE).first()


@contextlib.contextmanager
def moving(prefix: str):
    """Hold the right to move this prefix: one mover at a time, released if the mover dies."""
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [MOVER_LOCK_CLASS, int(prefix, 16)])
        if not cursor.fetchone()[0]:
            raise MoveError(f"Another process is moving prefix {prefix} right now.")
    try:
        yield
    finally:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [MOVER_LOCK_CLASS, int(prefix, 16)])


# -- the steps ----------------------------------------------------------------------------

def move_prefix(prefix: str, target: str, *, progress=no_progress) -> ShardMove:
    """Move every row of this guid prefix to `target` and return the finished move."""
    prefix, target = check_prefix(prefix), check_shard(target)
    with moving(prefix):
        move = begin_move(prefix, target, progress=progress)
        copy_rows(move, progress=progress)
        switch_map(move, progress=progress)
        clean_source(move, progress=progress)
    return move


def begin_move(prefix: str, target: str, *, progress=no_progress) -> ShardMove:
    """Record a move of `prefix` to `target` in state copying; refuse anything doubtful."""
    prefix, target = check_prefix(prefix), check_shard(target)
    existing = active_move(prefix)
    if existing is not None:
        raise MoveError(
            f"A move of {prefix} ({existing.source} → {existing.target}) stopped while {existing.state}; "
            f"finish it with --resume or undo it with --rollback first."
        )
    check_reachable("default")
    source = shard_for_prefix(prefix, fresh=True)
    if source == target:
        raise MoveError(f"Prefix {prefix} is already on {target}.")
    check_reachable(source)
    check_reachable(target)
    try:
        move = ShardMove.objects.using("default").create(prefix=prefix, source=source, target=target)
    except IntegrityError:
        raise MoveError(f"Another move of prefix {prefix} has just started.") from None
    progress(f"move {prefix}: {source} → {target}, copying")
    return move


def copy_rows(move: ShardMove, *, progress=no_progress) -> None:
    """Copy the prefix's rows to the target while writers carry on against the source."""
    counts = sync_prefix(move.prefix, move.source, move.target)
    progress(f"move {move.prefix}: copied {describe(counts)}")


def switch_map(move: ShardMove, *, progress=no_progress) -> None:
    """Fence the prefix, copy what changed since `copy_rows`, and point the map at the target."""
    started = time.monotonic()
    with transaction.atomic(using="default"):
        try:
            close_fence(move.prefix, timeout_ms=MOVER_FENCE_TIMEOUT_MS)
        except DatabaseError as exc:
            raise MoveError(f"Writers of {move.prefix} did not drain within {MOVER_FENCE_TIMEOUT_MS} ms: {exc}") from None
        move = ShardMove.objects.using("default").select_for_update().get(pk=move.pk)
        if move.state != ShardMove.State.COPYING:
            raise MoveError(f"Move of {move.prefix} is {move.state}, not copying; nothing to switch.")
        counts = sync_prefix(move.prefix, move.source, move.target)
        token = set_map_entry(move.prefix, move.target)
        move.state = ShardMove.State.SWITCHED
        move.save(update_fields=["state", "updated_at"])
    publish_token(token)
    forget_cached_map()
    held = (time.monotonic() - started) * 1000
    progress(f"move {move.prefix}: switched to {move.target} (fence held {held:.0f} ms, delta {describe(counts)})")


def clean_source(move: ShardMove, *, progress=no_progress) -> None:
    """Delete the prefix's rows from the shard it left, then record the move as cleaned."""
    time.sleep(CLEAN_GRACE_SECONDS)
    removed = delete_prefix(move.prefix, move.source)
    ShardMove.objects.using("default").filter(pk=move.pk).update(state=ShardMove.State.CLEANED)
    move.state = ShardMove.State.CLEANED
    progress(f"move {move.prefix}: removed {describe(removed)} from {move.source}; done")


def resume_move(prefix: str, target: str | None = None, *, progress=no_progress) -> ShardMove:
    """Finish an interrupted move from the step it stopped at."""
    prefix = check_prefix(prefix)
    with moving(prefix):
        move = interrupted_move(prefix, target)
        check_reachable(move.source)
        check_reachable(move.target)
        progress(f"move {prefix}: resuming {move.source} → {move.target} from {move.state}")
        if move.state == ShardMove.State.COPYING:
            copy_rows(move, progress=progress)
            switch_map(move, progress=progress)
        clean_source(move, progress=progress)
    return move


def rollback_move(prefix: str, target: str | None = None, *, progress=no_progress) -> ShardMove:
    """Undo an interrupted move: the prefix ends on its source shard, its rows intact."""
    prefix = check_prefix(prefix)
    with moving(prefix):
        move = interrupted_move(prefix, target)
        check_reachable(move.source)
        check_reachable(move.target)
        progress(f"move {prefix}: rolling back {move.source} → {move.target} from {move.state}")
        if move.state == ShardMove.State.SWITCHED:
            # Writes since the switch went to the target: bring them back the way they came.
            counts = sync_prefix(prefix, move.target, move.source)
            progress(f"move {prefix}: copied {describe(counts)} back to {move.source}")
            with transaction.atomic(using="default"):
                close_fence(prefix, timeout_ms=MOVER_FENCE_TIMEOUT_MS)
                sync_prefix(prefix, move.target, move.source)
                token = set_map_entry(prefix, move.source)
            publish_token(token)
            forget_cached_map()
            progress(f"move {prefix}: map points at {move.source} again")
            time.sleep(CLEAN_GRACE_SECONDS)
        removed = delete_prefix(prefix, move.target)
        ShardMove.objects.using("default").filter(pk=move.pk).update(state=ShardMove.State.ROLLED_BACK)
        move.state = ShardMove.State.ROLLED_BACK
        progress(f"move {prefix}: removed {describe(removed)} from {move.target}; rolled back")
    return move


def interrupted_move(prefix: str, target: str | None) -> ShardMove:
    move = active_move(prefix)
    if move is None:
        raise MoveError(f"No interrupted move of prefix {prefix}.")
    if target and target != move.target:
        raise MoveError(f"The interrupted move of {prefix} is to {move.target}, not {target}.")
    return move


def set_map_entry(prefix: str, alias: str) -> str:
    """Point the prefix at `alias` and change the map token; return the new token."""
    ShardMapEntry.objects.using("default").update_or_create(prefix=prefix, defaults={"shard": alias})
    token = uuid.uuid4().hex
    ShardMapVersion.objects.using("default").update_or_create(pk=1, defaults={"token": token})
    return token


# -- copying rows -------------------------------------------------------------------------

def prefix_rows(model, alias: str, prefix: str):
    """Return the prefix's rows of one model on one shard, by an indexed range on the guid.

    Guids are lowercase hex, so every guid starting with `ab` sorts in [`ab`, `abg`).
    """
    field = "guid" if model is User else "user"
    return model.objects.using(alias).filter(**{f"{field}__gte": prefix, f"{field}__lt": f"{prefix}g"})


def sync_prefix(prefix: str, source: str, target: str) -> dict[str, int]:
    """Make the target's rows of the prefix equal the source's; return what was written.

    Users are compared on every field, queries on what each step of their life changes,
    charges (never updated) by query id; a charge gets a new id on the target, since ids
    are per database, and its unique query id keeps it single.
    """
    counts = {"users": 0, "queries": 0, "charges": 0, "stale": 0}
    user_columns = [field.column for field in User._meta.concrete_fields]
    source_users = {row[0]: row for row in prefix_rows(User, source, prefix).values_list(*user_columns)}
    target_users = {row[0]: row for row in prefix_rows(User, target, prefix).values_list(*user_columns)}
    changed = [row for guid, row in source_users.items() if target_users.get(guid) != row]
    upsert(target, User, user_columns, changed, conflict="guid")
    counts["users"] = len(changed)

    # Outside the fence the source keeps changing between these reads: a query is copied
    # only if its user was, a charge only if its query was; the fenced pass gets the rest.
    state = ("id", "status", "attempts", "cost", "user_id")
    source_queries = {row[0]: row for row in prefix_rows(Query, source, prefix).values_list(*state)}
    target_queries = {row[0]: row for row in prefix_rows(Query, target, prefix).values_list(*state)}
    changed_ids = [
        query_id
        for query_id, row in source_queries.items()
        if target_queries.get(query_id) != row and row[-1] in source_users
    ]
    query_columns = [field.column for field in Query._meta.concrete_fields]
    for start in range(0, len(changed_ids), BATCH):
        batch = changed_ids[start:start + BATCH]
        rows = Query.objects.using(source).filter(pk__in=batch).values_list(*query_columns)
        upsert(target, Query, query_columns, list(rows), conflict="id")
    counts["queries"] = len(changed_ids)

    source_charges = set(prefix_rows(Charge, source, prefix).values_list("query_id", flat=True))
    target_charges = set(prefix_rows(Charge, target, prefix).values_list("query_id", flat=True))
    missing = [query_id for query_id in source_charges - target_charges if query_id in source_queries]
    charge_columns = [field.column for field in Charge._meta.concrete_fields if not field.primary_key]
    for start in range(0, len(missing), BATCH):
        rows = Charge.objects.using(source).filter(query_id__in=missing[start:start + BATCH]).values_list(*charge_columns)
        upsert(target, Charge, charge_columns, list(rows), conflict="query_id", update=False)
    counts["charges"] = len(missing)

    # Rows on the target that the source does not have are leftovers of an earlier attempt.
    with transaction.atomic(using=target):
        counts["stale"] += prefix_rows(Charge, target, prefix).filter(query_id__in=target_charges - source_charges).delete()[0]
        stale_queries = set(target_queries) - set(source_queries)
        counts["stale"] += prefix_rows(Query, target, prefix).filter(pk__in=stale_queries).delete()[0]
        counts["stale"] += prefix_rows(User, target, prefix).filter(pk__in=set(target_users) - set(source_users)).delete()[0]
    return counts


def upsert(alias: str, model, columns: list[str], rows: list[tuple], *, conflict: str, update: bool = True) -> None:
    """Insert rows as they are (no auto_now rewriting), updating or keeping ones already there."""
    if not rows:
        return
    table = model._meta.db_table
    names = ", ".join(f'"{column}"' for column in columns)
    placeholders = ", ".join(["%s"] * len(columns))
    if update:
        assignments = ", ".join(f'"{column}" = EXCLUDED."{column}"' for column in columns if column != conflict)
        on_conflict = f"DO UPDATE SET {assignments}"
    else:
        on_conflict = "DO NOTHING"
    sql = f'INSERT INTO "{table}" ({names}) VALUES ({placeholders}) ON CONFLICT ("{conflict}") {on_conflict}'
    with transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            cursor.executemany(sql, rows)


def delete_prefix(prefix: str, alias: str) -> dict[str, int]:
    """Delete every row of the prefix from one shard, ledger first (it protects its queries)."""
    removed = {}
    with transaction.atomic(using=alias):
        for name, model in (("charges", Charge), ("queries", Query), ("users", User)):
            removed[name] = prefix_rows(model, alias, prefix).delete()[0]
    return removed


def describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{number} {name}" for name, number in counts.items())
