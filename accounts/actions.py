"""Every write to users and queries: one transaction on the user's shard each.

Every write runs inside `rentahal.sharding.writing_for`, which resolves the shard under
the prefix's fence, so a shard move never loses a write or lets one land on the old shard.
"""
import logging
import uuid

from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from accounts import billing
from accounts.models import FoundingUser, Query, User
from rentahal.errors import BrokerError, Forbidden, NotFound
from rentahal.sharding import (
    new_query_id,
    serialised_across_shards,
    shard_aliases,
    shard_for_guid,
    writing_for,
)

logger = logging.getLogger(__name__)

PREVIOUS_QUERIES_SHOWN = 10


def default_nickname(guid: str) -> str:
    return f"user_{guid[:8]}"


def normalise_guid(raw: str | None) -> str | None:
    """Return the cookie's guid in canonical form, or None if it is not a uuid."""
    try:
        return str(uuid.UUID(str(raw)))
    except (ValueError, TypeError, AttributeError):
        return None


def get_or_create_user(guid: str) -> User:
    """Return the user with this guid, creating it; the first user of the system is sysop."""
    alias = shard_for_guid(guid)
    user = User.objects.using(alias).filter(pk=guid).first()
    if user is not None:
        return user
    # The FoundingUser row is the race-free answer to "is this the first user?": only one
    # insert of its fixed primary key can succeed.
    with transaction.atomic(using="default"):
        _, is_first = FoundingUser.objects.using("default").get_or_create(pk=1, defaults={"guid": guid})
    try:
        with writing_for(guid) as alias:
            # Checked again under the fence: the read above may have used a map that a
            # shard move has since switched.
            user = User.objects.using(alias).filter(pk=guid).first()
            if user is None:
                user = User.objects.using(alias).create(guid=guid, nickname=default_nickname(guid), is_sysop=is_first)
    except IntegrityError:
        # Two tabs of a new user connected at once; the other created the row.
        user = User.objects.using(shard_for_guid(guid)).get(pk=guid)
    if is_first:
        logger.info("first user %s is sysop", guid)
    return user


def find_user(guid: str) -> User:
    normalised = normalise_guid(guid)
    user = User.objects.using(shard_for_guid(normalised)).filter(pk=normalised).first() if normalised else None
    if user is None:
        raise NotFound(f"No user with guid {guid}.")
    return user


def set_nickname(user: User, nickname: str) -> User:
    nickname = (nickname or "").strip()
    if not 1 <= len(nickname) <= 64:
        raise BrokerError("A nickname is 1 to 64 characters.", code="bad_nickname")
    taken = BrokerError("Nickname already taken", code="nickname_taken")
    # Each shard's unique constraint sees only its own users; the lock makes "nobody on any
    # shard has it" and the write one step for everyone asking for this nickname.
    with serialised_across_shards(f"nickname:{nickname}"):
        for alias in shard_aliases():
            if User.objects.using(alias).filter(nickname=nickname).exclude(pk=user.pk).exists():
                raise taken
        try:
            with writing_for(user.guid) as alias:
                User.objects.using(alias).filter(pk=user.pk).update(nickname=nickname)
        except IntegrityError:
            raise taken from None
    user.nickname = nickname
    return user


def set_banned(guid: str, is_banned: bool, *, acting_user: User) -> User:
    if not acting_user.is_sysop:
        raise Forbidden("Only a sysop may ban or unban users.")
    user = find_user(guid)
    if user.pk == acting_user.pk and is_banned:
        raise BrokerError("A sysop cannot ban themselves.", code="ban_self")
    return store_ban(user, is_banned)


def store_ban(user: User, is_banned: bool) -> User:
    """Write the ban flag; callers have checked who may (a sysop, or staff in the admin)."""
    with writing_for(user.guid) as alias:
        User.objects.using(alias).filter(pk=user.pk).update(is_banned=is_banned)
    user.is_banned = is_banned
    logger.info("user %s %s", user.guid, "banned" if is_banned else "unbanned")
    return user


def previous_queries(user: User) -> list[dict]:
    rows = Query.objects.using(shard_for_guid(user.guid)).filter(user_id=user.pk).order_by("-accepted_at")
    return [query.as_frame_data() for query in rows[:PREVIOUS_QUERIES_SHOWN]]


def accept_query(
    guid: str, *, query_type: str, prompt: str, model_type: str, model_name: str, image: str, realm: str, on_accepted
) -> Query:
    """Write the query row and run `on_accepted(query)` once the row is committed.

    The row exists before any job does, so an acknowledged query is never only in Redis.
    The user's ban is checked by the insert itself (it selects from the user's row), so a
    ban committed before it always refuses, whatever pushes to the user's sockets were
    lost, and accepting costs one statement.
    """
    query = Query(
        id=new_query_id(guid),
        user_id=guid,
        query_type=query_type,
        prompt=prompt,
        model_type=model_type,
        model_name=model_name,
        image=image,
        realm=realm,
    )
    with writing_for(guid, single_statement=True) as alias:
        if insert_if_user_may_query(query, using=alias):
            transaction.on_commit(lambda: on_accepted(query), using=alias)
            return query
    if find_user(guid).is_banned:
        raise Forbidden("You are banned from this service.")
    raise BrokerError("Your query could not be accepted; try again.", code="not_accepted")


def insert_if_user_may_query(query: Query, *, using: str) -> bool:
    """Insert the query row if its user exists and is not banned; return whether it was."""
    connection = connections[using]
    fields = Query._meta.concrete_fields
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    casts = ", ".join(f"%s::{field.cast_db_type(connection)}" for field in fields)
    values = [field.get_db_prep_save(field.pre_save(query, add=True), connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Query._meta.db_table} ({columns}) "
            f"SELECT {casts} FROM {User._meta.db_table} WHERE guid = %s AND NOT is_banned",
            [*values, query.user_id],
        )
        return cursor.rowcount == 1


def start_query(query_id) -> Query | None:
    """Mark the query running and return it, or None if it is already finished (a rerun)."""
    with writing_for(query_id) as alias:
        return update_unfinished_query(
            query_id,
            "status = %s, started_at = %s, attempts = attempts + 1",
            [Query.Status.RUNNING, timezone.now()],
            using=alias,
        )


def finish_query(query_id, *, result: str, result_type: str, worker: str) -> Query | None:
    """Store the result and charge for it in one transaction; None if already finished."""
    with writing_for(query_id) as alias:
        now = timezone.now()
        query = update_unfinished_query(
            query_id,
            "status = %s, result = %s, result_type = %s, worker = %s, finished_at = %s, "
            "processing_time = EXTRACT(EPOCH FROM %s::timestamptz - accepted_at)",
            [Query.Status.DONE, result, result_type, worker, now, now],
            using=alias,
        )
        if query is None:
            return None
        query.cost = billing.charge(query, query.processing_time, using=alias)
    return query


def fail_query(query_id, *, error: str, worker: str = "") -> Query | None:
    """Record a failure the user can read; nothing is charged. None if already finished."""
    with writing_for(query_id) as alias:
        now = timezone.now()
        query = update_unfinished_query(
            query_id,
            "status = %s, error = %s, worker = %s, finished_at = %s, "
            "processing_time = EXTRACT(EPOCH FROM %s::timestamptz - accepted_at)",
            [Query.Status.FAILED, error, worker, now, now],
            using=alias,
        )
        if query is None:
            return None
        billing.count_failure(using=alias)
    logger.info("query %s failed: %s", query_id, error)
    return query


def update_unfinished_query(query_id, assignments: str, params: list, *, using: str) -> Query | None:
    """Apply `assignments` to the query unless it is finished; return the row as stored.

    One statement instead of SELECT ... FOR UPDATE and UPDATE: the UPDATE locks the row, and
    if a concurrent writer held it, Postgres re-checks the WHERE clause against the committed
    row before writing, so a rerun or a race with a finish still finds the query finished
    and changes nothing.
    """
    table = Query._meta.db_table
    rows = list(
        Query.objects.using(using).raw(
            f"UPDATE {table} SET {assignments} WHERE id = %s AND status NOT IN (%s, %s) RETURNING *",
            [*params, query_id, *Query.FINISHED],
        )
    )
    return rows[0] if rows else None


def unfinished_queries(guid: str) -> list[Query]:
    return list(
        Query.objects.using(shard_for_guid(guid)).filter(user_id=guid).exclude(status__in=Query.FINISHED)
    )


def unfinished_queries_older_than(cutoff) -> list[Query]:
    """Return unfinished queries accepted before `cutoff`, from every shard.

    A query seen on two shards (mid-move, before the old copy is removed) is returned once.
    """
    found = {}
    for alias in shard_aliases():
        for query in (
            Query.objects.using(alias)
            .filter(accepted_at__lt=cutoff)
            .exclude(status__in=Query.FINISHED)
            .only("id", "status", "realm", "attempts", "user_id")
        ):
            found.setdefault(query.pk, query)
    return list(found.values())


def list_users(*, limit: int | None = None) -> list[User]:
    """Return every user, gathered from every shard, newest first (for sysop views).

    A user seen on two shards mid-move is listed once, from the shard the map names.
    """
    found: dict[str, User] = {}
    for alias in shard_aliases():
        rows = User.objects.using(alias).order_by("-created_at")
        for user in rows[:limit] if limit else rows:
            if user.pk not in found or shard_for_guid(user.pk) == alias:
                found[user.pk] = user
    users = sorted(found.values(), key=lambda user: user.created_at, reverse=True)
    return users[:limit] if limit else users
