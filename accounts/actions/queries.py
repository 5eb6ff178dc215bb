"""Every write to queries: accepting one, and the worker's batches that start, finish and
fail them (one statement per shard for a whole batch).

Every write runs inside `rentahal.sharding.writing_for_each`, which resolves the shard
under the prefix's fence, so a shard move never loses a write or lets one land on the old
shard.
"""
import dataclasses
import datetime
import enum
import functools
import logging
import uuid

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError, connections
from django.db.models import Count, Q
from django.utils import timezone

from psycopg.types.json import Jsonb

from accounts import billing, limits
from accounts.actions.users import find_user
from accounts.models import Query, User
from rentahal.prepared import prepared_cursor
from rentahal.errors import STORE_OUTAGES, BrokerError, Forbidden, TooManyQueries
from rentahal.pushes import QUERY_EVENTS, send_event_on_commit
from rentahal.sharding import ShardMoving, new_query_id, shard_aliases, shard_for_guid, writing_for_each

logger = logging.getLogger(__name__)


PREVIOUS_QUERIES_SHOWN = 10


def previous_queries(user: User) -> list[dict]:
    rows = Query.objects.using(shard_for_guid(user.guid)).filter(user_id=user.pk).order_by("-accepted_at")
    return [query.as_frame_data() for query in rows[:PREVIOUS_QUERIES_SHOWN]]


class Resubmitted(Exception):
    """The submission's idempotency key names a query the user submitted within
    RENTAHAL_IDEMPOTENCY_WINDOW: that query, to answer with instead of a second one."""

    def __init__(self, query: Query):
        super().__init__(str(query.pk))
        self.query = query


def accept_query(
    guid: str, *, query_type: str, prompt: str, model_type: str, model_name: str, image: str, realm: str,
    idempotency_key: str = "", conversation_id: str = "", audio: str = "", audio_format: str = "", speech_task: str = "",
    options: dict | None = None, api_key: int | None = None,
) -> Query:
    """Write the query row, with status `accepted`, and return it once it is committed.

    The caller enqueues its job only after this returns, so an acknowledged query is never
    only in Redis. Accepting costs one statement (`insert_if_user_may_query`): the user's
    ban, the fair-share caps and the idempotency key are all checked by the insert itself,
    so a ban committed before it always refuses and the caps hold under concurrent submits.
    Raise `Resubmitted` when `idempotency_key` names a query of the user's from the last
    RENTAHAL_IDEMPOTENCY_WINDOW seconds, `TooManyQueries` when a cap is reached.
    """
    # A try inserts nothing for a free slot only when a concurrent accept of the same user
    # took that slot; so after one try more than the cap, the cap is reached and says so.
    for _ in range(settings.RENTAHAL_MAX_QUERIES_PER_USER_IN_FLIGHT + 1):
        query = Query(
            id=new_query_id(guid),
            user_id=guid,
            query_type=query_type,
            prompt=prompt,
            model_type=model_type,
            model_name=model_name,
            image=image,
            audio=audio,
            audio_format=audio_format,
            speech_task=speech_task,
            realm=realm,
            idempotency_key=idempotency_key,
            conversation_id=conversation_id,
            options=options or {},
            api_key=api_key,
        )
        with writing_for_each([guid]) as by_alias:
            using = next(iter(by_alias))
            inserted = insert_if_user_may_query(query, using=using)
            # A row that met a conflict lost its slot to a concurrent accept of the same
            # user (a client sending in parallel) and tries again at once; unless it has an
            # idempotency key, which may be the conflict, or the statement refused it.
            if inserted is Insert.REFUSED or (inserted is Insert.CONFLICT and idempotency_key):
                refuse_unless_slot_was_taken(query, using=using)
        if inserted is Insert.DONE:
            publish_query_events("accepted", [query])
            return query
    raise BrokerError("Your query could not be accepted; try again.", code="not_accepted")


# The lowest slot number the payer does not hold, below the cap: 0 or one past a held slot.
# {held} picks the rows holding a slot, then the cap is the one parameter.
FREE_SLOT = """
    SELECT candidate.slot FROM (
        SELECT 0 AS slot
        UNION ALL
        SELECT held.{slot} + 1 FROM {table} AS held
        WHERE held.user_id = payer.guid AND {held} AND held.{slot} IS NOT NULL
    ) AS candidate
    WHERE NOT EXISTS (
        SELECT 1 FROM {table} AS held
        WHERE held.user_id = payer.guid AND {held} AND held.{slot} = candidate.slot
    ) AND candidate.slot < %s
    ORDER BY candidate.slot LIMIT 1
"""


class Insert(enum.Enum):
    """What the accept's statement did: inserted the row; found the row's slots (or its
    idempotency key) taken by a concurrent accept; or refused it (no such user, a ban, a cap)."""

    DONE = "done"
    CONFLICT = "conflict"
    REFUSED = "refused"


def insert_if_user_may_query(query: Query, *, using: str) -> Insert:
    """Insert the query row if its user exists, is not banned, has a free in-flight slot
    and a free queued slot, and has no query with its idempotency key; return what happened.

    The lowest free slot numbers are read in the statement; unique indexes over each user's
    unfinished (and still queued) queries' slots make a concurrent accept that read the same
    numbers insert nothing (ON CONFLICT DO NOTHING), so the caps are never overshot. The
    lowest free slot is 0 or one past a held slot (`FREE_SLOT`), so the search reads only the
    slots the user holds, through those unique indexes, whatever the caps are. The statement
    is prepared (`rentahal.prepared`): it runs once per query.
    """
    connection = connections[using]
    fields = insert_fields()
    values = [field.get_db_prep_save(field.pre_save(query, add=True), connection) for field in fields]
    with prepared_cursor(using) as cursor:
        cursor.execute(
            insert_statement(),
            [
                *values,
                settings.RENTAHAL_MAX_QUERIES_PER_USER_IN_FLIGHT,
                settings.RENTAHAL_MAX_QUERIES_PER_USER_QUEUED,
                query.user_id,
            ],
        )
        candidates, inserted = cursor.fetchone()
    if inserted:
        return Insert.DONE
    return Insert.CONFLICT if candidates else Insert.REFUSED


@functools.cache
def insert_fields() -> list:
    """The columns the accept writes itself; the slots are read in its statement."""
    return [field for field in Query._meta.concrete_fields if field.name not in {"in_flight_slot", "queued_slot"}]


@functools.cache
def insert_statement() -> str:
    """The accept's statement (`insert_if_user_may_query`), the same text for every query,
    so each connection prepares it once. Every shard is a Postgres database alike."""
    connection = connections["default"]
    table = Query._meta.db_table
    fields = insert_fields()
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    casts = ", ".join(f"%s::{field.cast_db_type(connection)}" for field in fields)
    # The statuses are written into the text, not passed as parameters: once Postgres plans
    # the prepared statement generically, only literals prove the slot indexes' conditions
    # (`status IN ('accepted', 'running')`), and without those indexes the search read every
    # row of the user's and every unfinished query's index entry (5 ms, growing with the table).
    unfinished = ", ".join(status_literal(status) for status in Query.UNFINISHED)
    in_flight = FREE_SLOT.format(table=table, slot="in_flight_slot", held=f"held.status IN ({unfinished})")
    queued = FREE_SLOT.format(
        table=table, slot="queued_slot",
        held=f"held.status = {status_literal(Query.Status.ACCEPTED)} AND held.started_at IS NULL",
    )
    return f"""
        WITH candidate AS (
            SELECT {casts}, in_flight.slot AS in_flight_slot, queued.slot AS queued_slot
            FROM {User._meta.db_table} AS payer
            CROSS JOIN LATERAL ({in_flight}) AS in_flight
            CROSS JOIN LATERAL ({queued}) AS queued
            WHERE payer.guid = %s AND NOT payer.is_banned
        ), inserted AS (
            INSERT INTO {table} ({columns}, in_flight_slot, queued_slot)
            SELECT * FROM candidate
            ON CONFLICT DO NOTHING
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM candidate), (SELECT count(*) FROM inserted)
        """


def status_literal(status: Query.Status) -> str:
    """A status as an SQL string literal (statuses are this code's own lowercase words)."""
    return f"'{status}'"


def refuse_unless_slot_was_taken(query: Query, *, using: str) -> None:
    """Raise why `insert_if_user_may_query` inserted nothing; return when the reason was a
    concurrent accept taking the slot it read (the caller tries again) or an expired
    idempotency key, which this releases."""
    key = query.idempotency_key
    if key:
        existing = Query.objects.using(using).filter(user_id=query.user_id, idempotency_key=key).first()
        if existing is not None:
            window = datetime.timedelta(seconds=settings.RENTAHAL_IDEMPOTENCY_WINDOW)
            if existing.accepted_at > timezone.now() - window:
                raise Resubmitted(existing)
            Query.objects.using(using).filter(pk=existing.pk, idempotency_key=key).update(idempotency_key="")
            return
    if find_user(query.user_id).is_banned:
        raise Forbidden("You are banned from this service.")
    held = Query.objects.using(using).filter(user_id=query.user_id, status__in=Query.UNFINISHED).aggregate(
        in_flight=Count("pk", filter=Q(in_flight_slot__isnull=False)),
        queued=Count("pk", filter=Q(status=Query.Status.ACCEPTED, started_at__isnull=True, queued_slot__isnull=False)),
    )
    retry_after = settings.RENTAHAL_TOO_MANY_QUERIES_RETRY_AFTER
    if held["in_flight"] >= settings.RENTAHAL_MAX_QUERIES_PER_USER_IN_FLIGHT:
        raise TooManyQueries(
            f"You have {held['in_flight']} queries not yet answered, the most one user may have; "
            f"try again in {retry_after:g} seconds.",
            retry_after=retry_after,
        )
    if held["queued"] >= settings.RENTAHAL_MAX_QUERIES_PER_USER_QUEUED:
        raise TooManyQueries(
            f"You have {held['queued']} queries waiting for a worker, the most one user may have; "
            f"try again in {retry_after:g} seconds.",
            retry_after=retry_after,
        )


def start_queries(query_ids: list) -> list[Query | None | Exception]:
    """Mark the queries running; return each as stored, or None if it is already finished
    (a rerun), or the exception that kept it from being written.

    One `UPDATE ... WHERE id = ANY(...) RETURNING *` per shard. It locks the rows, and if a
    concurrent writer held one, Postgres re-checks the WHERE clause against the committed
    row before writing, so a rerun or a race with a finish still finds the query finished
    and changes nothing. A query listed twice is started once and returned to both.
    """
    ids = [uuid.UUID(str(query_id)) for query_id in query_ids]
    return published("started", write_by_shard(ids, ids, store_started))


def published(op: str, outcomes: list) -> list:
    """Publish the queries a batch wrote (`queries.changed`), and return the batch's outcomes."""
    written = [outcome for outcome in outcomes if isinstance(outcome, Query)]
    if written:
        publish_query_events(op, written)
    return outcomes


def publish_query_events(op: str, queries: list[Query]) -> None:
    """Tell subscribers of `events.queries` what happened to these queries, while any listen.

    Batch writes commit statement by statement, outside any transaction, so the event goes
    out at once (`send_event_on_commit` outside a transaction)."""
    event = {
        "type": "queries.changed",
        "op": op,
        "queries": [
            {
                "query_id": str(query.pk), "user": query.user_id, "realm": query.realm, "query_type": query.query_type,
                "status": query.status, "worker": query.worker,
            }
            for query in queries
        ],
    }
    send_event_on_commit(QUERY_EVENTS, event, using="default", if_listened=True)


def store_started(ids: list[uuid.UUID], *, using: str) -> list[Query | None]:
    table = Query._meta.db_table
    started = Query.objects.using(using).raw(
        f"UPDATE {table} SET status = %s, started_at = %s, attempts = attempts + 1 "
        "WHERE id = ANY(%s) AND status <> ALL(%s) RETURNING *",
        [Query.Status.RUNNING, timezone.now(), ids, list(Query.FINISHED)],
    )
    stored = {query.pk: query for query in started}
    return [stored.get(query_id) for query_id in ids]


def return_queries_to_waiting(query_ids: list) -> list[Query | None | Exception]:
    """Mark running queries accepted again, their run not counted: every worker they may use
    was busy, and their jobs go back on the realm's queue (`realms.lifecycle.run_query`).
    `started_at` stays set, so they do not take one of their users' queued slots again
    (the in-flight slot they hold bounds them). A query finished meanwhile is left as it is."""
    ids = [uuid.UUID(str(query_id)) for query_id in query_ids]
    return write_by_shard(ids, ids, store_waiting)


def store_waiting(ids: list[uuid.UUID], *, using: str) -> list[Query | None]:
    table = Query._meta.db_table
    waiting = Query.objects.using(using).raw(
        f"UPDATE {table} SET status = %s, attempts = GREATEST(attempts - 1, 0) "
        "WHERE id = ANY(%s) AND status = %s RETURNING *",
        [Query.Status.ACCEPTED, ids, Query.Status.RUNNING],
    )
    stored = {query.pk: query for query in waiting}
    return [stored.get(query_id) for query_id in ids]


@dataclasses.dataclass(frozen=True)
class Answer:
    """A query's answer, to store and charge for; `query` is the row `start_queries` returned
    and `processing_time` the seconds billed: the service time of the call that answered
    (`pools.dispatch.Served.service_seconds`), not time queued or spent on failed attempts."""

    query: Query
    result: str
    result_type: str
    worker: str
    processing_time: float
    prompt: str = ""  # the words a speech query's audio was heard to say; blank keeps the prompt
    usage: dict = dataclasses.field(default_factory=dict)


def finish_queries(answers: list[Answer]) -> list[Query | None | Exception]:
    """Store each answer, mark its query done and charge for it; return each query as
    stored, or None if it was already finished (nothing is charged), or the exception that
    kept it from being written.

    What a query made with an API key was charged counts against the key's budgets
    (`accounts.limits`) once it is committed."""
    outcomes = published("completed", write_by_shard(answers, [answer.query.pk for answer in answers], store_answers))
    spends = [(query.api_key, query.cost) for query in outcomes if isinstance(query, Query) and query.api_key]
    try:
        limits.record_spend(spends)
    except STORE_OUTAGES as exc:
        logger.warning("spend of %d API-key queries not counted, Redis is down: %s", len(spends), exc)
    return outcomes


def store_answers(answers: list[Answer], *, using: str) -> list[Query | None]:
    """Store the answers, mark their queries done and charge for them; return each query as
    stored, or None where it was already finished (a rerun, or the same query twice).

    One statement for the whole batch, on the shard `using`, outside any transaction
    (autocommit makes it atomic): it updates the queries that are not finished yet and
    charges for exactly those (`accounts.billing.charge_for`). Each answer's billed seconds
    are stored as its processing time and `accounts.billing.cost_of` prices them.
    """
    now = timezone.now()
    unique: dict = {}
    for answer in answers:
        unique.setdefault(answer.query.pk, answer)
    firsts = list(unique.values())
    times = [answer.processing_time for answer in firsts]
    table = Query._meta.db_table
    done = Query.objects.using(using).raw(
        f"""
        WITH answer AS (
            SELECT * FROM unnest(
                %(ids)s::uuid[], %(results)s::text[], %(result_types)s::text[], %(workers)s::text[],
                %(times)s::float8[], %(costs)s::numeric[], %(prompts)s::text[], %(usages)s::jsonb[]
            ) AS given (id, result, result_type, worker, processing_time, cost, prompt, usage)
        ), done AS (
            UPDATE {table} AS q SET
                status = %(done)s, result = answer.result, result_type = answer.result_type,
                worker = answer.worker, finished_at = %(now)s,
                processing_time = answer.processing_time, cost = answer.cost, usage = answer.usage,
                prompt = COALESCE(NULLIF(answer.prompt, ''), q.prompt)
            FROM answer
            WHERE q.id = answer.id AND q.status <> ALL(%(finished)s::text[])
            RETURNING q.*
        ), {billing.charge_for("done")}
        SELECT * FROM done
        """,
        {
            "ids": [answer.query.pk for answer in firsts],
            "results": [answer.result for answer in firsts],
            "result_types": [answer.result_type for answer in firsts],
            "workers": [answer.worker for answer in firsts],
            "times": times,
            "costs": [billing.cost_of(seconds) for seconds in times],
            "prompts": [answer.prompt for answer in firsts],
            "usages": [Jsonb(answer.usage) for answer in firsts],
            "done": Query.Status.DONE,
            "finished": list(Query.FINISHED),
            "now": now,
        },
    )
    stored = {query.pk: query for query in done}
    return [stored.pop(answer.query.pk, None) for answer in answers]


@dataclasses.dataclass(frozen=True)
class Failure:
    """Why a query failed, for the user to read, and the worker that failed it, if any."""

    query_id: uuid.UUID | str
    error: str
    worker: str = ""


def fail_queries(failures: list[Failure]) -> list[Query | None | Exception]:
    """Record failures the user can read; nothing is charged. Return each query as stored,
    or None if it was already finished, or the exception that kept it from being written."""
    outcomes = write_by_shard(failures, [failure.query_id for failure in failures], store_failed)
    for failure, outcome in zip(failures, outcomes):
        if isinstance(outcome, Query):
            logger.info("query %s failed: %s", failure.query_id, failure.error)
    return published("failed", outcomes)


def store_failed(failures: list[Failure], *, using: str) -> list[Query | None]:
    """Mark the queries failed and count them in the shard's totals, in one statement."""
    unique: dict = {}
    for failure in failures:
        unique.setdefault(uuid.UUID(str(failure.query_id)), failure)
    table = Query._meta.db_table
    failed = Query.objects.using(using).raw(
        f"""
        WITH failure AS (
            SELECT * FROM unnest(%(ids)s::uuid[], %(errors)s::text[], %(workers)s::text[])
                AS given (id, error, worker)
        ), failed AS (
            UPDATE {table} AS q SET
                status = %(failed)s, error = failure.error, worker = failure.worker, finished_at = %(now)s,
                processing_time = EXTRACT(EPOCH FROM %(now)s::timestamptz - q.accepted_at)
            FROM failure
            WHERE q.id = failure.id AND q.status <> ALL(%(finished)s::text[])
            RETURNING q.*
        ), {billing.add_to_system_totals("failed", failed=True)}
        SELECT * FROM failed
        """,
        {
            "ids": list(unique),
            "errors": [failure.error for failure in unique.values()],
            "workers": [failure.worker for failure in unique.values()],
            "failed": Query.Status.FAILED,
            "finished": list(Query.FINISHED),
            "now": timezone.now(),
        },
    )
    stored = {query.pk: query for query in failed}
    return [stored.pop(uuid.UUID(str(failure.query_id)), None) for failure in failures]


def write_by_shard(items: list, keys: list, write) -> list:
    """Write `items` with `write(items_of_one_shard, using=alias)`, once per shard, under
    their prefixes' fences (`rentahal.sharding.writing_for_each`); return one outcome per
    item, in order: what `write` returned for it, or the exception that kept it from being
    written.

    `write` must be one statement per call. When the database refuses one for an item's
    sake (a second charge for a query, a value that does not fit), that shard's items are
    written one at a time, so one bad item never fails the others. A closed fence (a shard
    move) refuses the batch before anything is written; then each item is written alone,
    so only the moving prefix's items wait, and fail if the move outlasts the wait.
    """
    try:
        with writing_for_each(keys) as by_alias:
            outcomes = [None] * len(items)
            for alias, indexes in by_alias.items():
                try:
                    written = write_each_if_refused([items[index] for index in indexes], write, using=alias)
                except DatabaseError as exc:
                    # Other shards' statements may have committed already: their items
                    # keep their outcomes, only this shard's items get the error.
                    written = [exc] * len(indexes)
                    drop_if_broken(alias)
                for index, outcome in zip(indexes, written):
                    outcomes[index] = outcome
    except ShardMoving as exc:
        if len(items) == 1:
            return [exc]
        return [write_by_shard([item], [key], write)[0] for item, key in zip(items, keys)]
    return outcomes


def drop_if_broken(alias: str) -> None:
    """Close the shard's connection if the error broke it (a Postgres restart), so the
    caller's next try (`realms.lifecycle.write_through_outage`) opens a new one."""
    connection = connections[alias]
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


def write_each_if_refused(items: list, write, *, using: str) -> list:
    try:
        return write(items, using=using)
    except (IntegrityError, DataError) as exc:
        if len(items) == 1:
            return [exc]
        logger.warning("a batch of %d writes on %s was refused (%s); writing them one at a time", len(items), using, exc)
        return [write_each_if_refused([item], write, using=using)[0] for item in items]


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
