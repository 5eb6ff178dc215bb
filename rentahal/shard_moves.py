"""Moving one guid prefix between shards while the broker runs, resumably.

A move is copying → switched → cleaned (or rolled_back), recorded in `ShardMove` on
`default` before each step begins, so a move killed anywhere can be resumed or rolled back:

1. copying: note the source's change numbers under the prefix's fence (held just long
   enough for writers in flight to commit, see `rentahal.change_numbers`), then sync the
   prefix's rows from source to target while writers keep writing to the source (the map
   still names it). Sync makes the target's rows of the prefix equal to the source's, so
   rerunning it after a kill is harmless.
2. switch: take the prefix's fence exclusively (writers wait, see
   `rentahal.sharding.writing_for`), copy the rows stamped since step 1 noted the change
   numbers (queries accepted, finished or charged meanwhile, user totals), point the map
   at the target and change the version token, all in one `default` transaction. The
   fence is held for that delta only, read through an index, so its length follows the
   writes made during the move, not the prefix's size; writers resume on the target the
   moment it commits. Then the token is published to every process.
3. clean: delete the prefix's rows from the source. No writer resolves to the source any
   more, so this needs no fence.

What a move carries is what the apps declared (`rentahal.sharded_models.moved_models`): every
model whose `sharding` names a key. Per-shard rows (`Sharded(key=None)`, such as counters
summed over the shards) are left alone, so their sums are the same before and after.
"""
import contextlib
import logging
import time
import uuid

from django.db import DatabaseError, IntegrityError, connections, transaction

from rentahal.change_numbers import last_change_number
from rentahal.errors import BrokerError
from rentahal.models import ShardMapEntry, ShardMapVersion, ShardMove
from rentahal.prefix_copies import copy_changes, delete_prefix, describe, sync_prefix
from rentahal.sharded_models import moved_models
from rentahal.sharding import (
    close_fence,
    forget_cached_map,
    has_shards,
    is_valid_prefix,
    publish_token,
    read_token,
    shard_aliases,
    shard_for_prefix,
)

logger = logging.getLogger(__name__)

# The mover waits this long for writers in flight to drain before the switch.
MOVER_FENCE_TIMEOUT_MS = 30_000
# Between the switch and deleting the old rows, readers whose cached map predates the
# switch finish reading from the source.
CLEAN_GRACE_SECONDS = 0.5
MOVER_LOCK_CLASS = 0x5248_0003


class MoveError(BrokerError):
    """A move refused or stopped, with a message for the operator; the map is unchanged."""

    code = "move_refused"
    http_status = 409


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
    """Note where the source's change numbers stand, then copy the prefix's rows to the
    target while writers carry on against the source."""
    move.watermarks = mark_changes(move.prefix, move.source)
    ShardMove.objects.using("default").filter(pk=move.pk).update(watermarks=move.watermarks)
    counts = sync_prefix(move.prefix, move.source, move.target)
    progress(f"move {move.prefix}: copied {describe(counts)}")


def switch_map(move: ShardMove, *, progress=no_progress) -> dict[str, int]:
    """Fence the prefix, copy what changed since `copy_rows`, point the map at the target
    and tell every process; return what the fenced step copied."""
    started = time.monotonic()
    counts = commit_switch(move)
    held = (time.monotonic() - started) * 1000
    publish_map()
    progress(f"move {move.prefix}: switched to {move.target} (fence held {held:.0f} ms, delta {describe(counts)})")
    return counts


def commit_switch(move: ShardMove) -> dict[str, int]:
    """Under the prefix's fence, copy the rows written since `copy_rows` noted the change
    numbers and point the map at the target, in one `default` transaction; return how many
    rows of each model were copied.

    Writers see the switch at once (they read the map token in Postgres); readers only once
    the token is published (`publish_map`).
    """
    with transaction.atomic(using="default"):
        fence_writers(move.prefix)
        move = ShardMove.objects.using("default").select_for_update().get(pk=move.pk)
        if move.state != ShardMove.State.COPYING:
            raise MoveError(f"Move of {move.prefix} is {move.state}, not copying; nothing to switch.")
        counts = copy_changes(move.prefix, move.source, move.target, move.watermarks)
        set_map_entry(move.prefix, move.target)
        move.state = ShardMove.State.SWITCHED
        move.save(update_fields=["state", "updated_at"])
    return counts


def publish_map() -> None:
    """Publish the map token recorded in Postgres, so every process's next read sees the map
    as committed (a mover killed before this left readers on the map it replaced)."""
    publish_token(read_token())
    forget_cached_map()


def clean_source(move: ShardMove, *, progress=no_progress) -> None:
    """Delete the prefix's rows from the shard it left, then record the move as cleaned."""
    time.sleep(CLEAN_GRACE_SECONDS)
    removed = delete_prefix(move.prefix, move.source)
    ShardMove.objects.using("default").filter(pk=move.pk).update(state=ShardMove.State.CLEANED)
    move.state = ShardMove.State.CLEANED
    progress(f"move {move.prefix}: removed {describe(removed)} from {move.source}; done")


def resume_move(prefix: str, target: str | None = None, *, progress=no_progress) -> ShardMove:
    """Finish an interrupted move from the step it stopped at, publishing the map token first
    (the mover may have died after committing its switch and before publishing it)."""
    prefix = check_prefix(prefix)
    with moving(prefix):
        move = interrupted_move(prefix, target)
        check_reachable(move.source)
        check_reachable(move.target)
        progress(f"move {prefix}: resuming {move.source} → {move.target} from {move.state}")
        publish_map()
        if move.state == ShardMove.State.COPYING:
            copy_rows(move, progress=progress)
            switch_map(move, progress=progress)
        clean_source(move, progress=progress)
    return move


def rollback_move(prefix: str, target: str | None = None, *, progress=no_progress) -> ShardMove:
    """Undo an interrupted move: the prefix ends on its source shard, its rows intact.

    The map token is published first, so readers follow the map while the move is undone
    even if the mover died before publishing its switch.
    """
    prefix = check_prefix(prefix)
    with moving(prefix):
        move = interrupted_move(prefix, target)
        check_reachable(move.source)
        check_reachable(move.target)
        progress(f"move {prefix}: rolling back {move.source} → {move.target} from {move.state}")
        publish_map()
        if move.state == ShardMove.State.SWITCHED:
            # Writes since the switch went to the target: bring them back the way they came.
            watermarks = mark_changes(prefix, move.target)
            counts = sync_prefix(prefix, move.target, move.source)
            progress(f"move {prefix}: copied {describe(counts)} back to {move.source}")
            with transaction.atomic(using="default"):
                fence_writers(prefix)
                copy_changes(prefix, move.target, move.source, watermarks)
                set_map_entry(prefix, move.source)
            publish_map()
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


def fence_writers(prefix: str) -> None:
    """Close the prefix's fence until the enclosing `default` transaction ends."""
    try:
        close_fence(prefix, timeout_ms=MOVER_FENCE_TIMEOUT_MS)
    except DatabaseError as exc:
        raise MoveError(f"Writers of {prefix} did not drain within {MOVER_FENCE_TIMEOUT_MS} ms: {exc}") from None


def mark_changes(prefix: str, alias: str) -> dict[str, int]:
    """Return, per moved model, the last change number handed out on `alias`, read under
    the prefix's fence.

    Writers hold the fence for their whole transaction, so once it is granted every row of
    the prefix stamped at or below these numbers is committed, and every write after it is
    released is stamped above them: rows a later read misses are all above the mark.
    """
    with transaction.atomic(using="default"):
        fence_writers(prefix)
        return {model._meta.label: last_change_number(model, alias) for model in moved_models()}


def set_map_entry(prefix: str, alias: str) -> str:
    """Point the prefix at `alias` and change the map token; return the new token."""
    ShardMapEntry.objects.using("default").update_or_create(prefix=prefix, defaults={"shard": alias})
    token = uuid.uuid4().hex
    ShardMapVersion.objects.using("default").update_or_create(pk=1, defaults={"token": token})
    return token
