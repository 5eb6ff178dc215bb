"""Every write to pools: workers, pool aliases and their members, and recorded attempts.

The writes of configuration take the actor keyword-only (`rentahal.actors`), commit in one
durable transaction on `default` and publish what changed once it commits
(`rentahal.pushes`); they refuse with `rentahal.errors.Invalid` or `NotFound`."""
from __future__ import annotations

import dataclasses
import datetime
import logging
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import DataError, IntegrityError, close_old_connections, transaction
from django.utils import timezone

from pools.models import HealthSample, PoolAlias, PoolMember, SelectionOutcome, Specialization, Strategy, Worker
from rentahal.actors import describe_actor
from rentahal.batching import Coalescer
from rentahal.errors import DATABASE_OUTAGES, Invalid, NotFound
from rentahal.pushes import BROADCAST_GROUP, POOL_EVENTS, frame_event, send_event_on_commit

if TYPE_CHECKING:
    from pools.clients import ModelAnswer, ModelServerError
    from pools.selection import Selection

logger = logging.getLogger(__name__)


def add_worker(
    *,
    name: str,
    address: str,
    query_type: str,
    wire_format: str = "predict",
    model: str = "",
    realm: str = "",
    max_concurrency: int = 0,
    api_key: str | None = None,
    acting_user=None,
) -> Worker:
    """Register a model server, or update the one of that name (the sysop's `add_worker`
    frame, the API, a command); raise Invalid on bad fields. An `api_key` of None keeps the
    key the worker has: the key is write-only, so a client re-registering never knows it."""
    worker = Worker.objects.filter(name=name).first() or Worker(name=name)
    if api_key is not None:
        worker.api_key = api_key
    worker.address = address
    worker.query_type = query_type
    worker.wire_format = wire_format
    worker.model = model
    worker.realm = realm
    worker.max_concurrency = max_concurrency
    return save_worker(worker, acting_user=acting_user)


def save_worker(worker: Worker, *, specializations: dict[str, list[str]] | None = None, acting_user=None) -> Worker:
    """Validate and save a worker and, when given, replace its specializations (topic →
    keywords); every socket then gets the new `worker_update`."""
    validate(worker, validate_unique=False)
    topics = [Specialization(worker=worker, topic=topic, keywords=words) for topic, words in (specializations or {}).items()]
    for topic in topics:
        validate(topic, exclude=["worker"])
    with transaction.atomic(using="default", durable=True):
        worker.save()
        if specializations is not None:
            worker.specializations.exclude(topic__in=list(specializations)).delete()
            for topic in topics:
                Specialization.objects.update_or_create(worker=worker, topic=topic.topic, defaults={"keywords": topic.keywords})
        publish_worker_change(worker.name, "saved", acting_user)
    logger.info(
        "worker %s registered at %s (%s, %s) by %s",
        worker.name, worker.address, worker.query_type, worker.wire_format, describe_actor(acting_user),
    )
    return worker


def remove_worker(name: str, *, acting_user=None) -> None:
    """Remove the worker of that name (and its pool seats); raise NotFound if there is none."""
    with transaction.atomic(using="default", durable=True):
        deleted, _ = Worker.objects.filter(name=name).delete()
        if not deleted:
            raise NotFound(f"No worker named '{name}'.", code="unknown_worker")
        publish_worker_change(name, "deleted", acting_user)
    logger.info("worker %s removed by %s", name, describe_actor(acting_user))


def list_workers(*, with_addresses: bool = False) -> list[dict]:
    """Return every worker as `worker_update` lists it; addresses only for sysops (pools.status.worker_frames)."""
    from pools.status import worker_frames

    return worker_frames(list(Worker.objects.all()), with_addresses=with_addresses)


def worker_update_frame(*, with_addresses: bool = False) -> dict:
    """Return the `worker_update` frame: the workers (addresses only for sysops) and the pool
    aliases a query may name (rentahal's addition, `pools`)."""
    from pools.status import pool_aliases

    return {"type": "worker_update", "workers": list_workers(with_addresses=with_addresses), "pools": pool_aliases()}


def worker_update_event() -> dict:
    """Return the broadcast `worker_update`: names and health for every socket, and the same
    list with addresses for sysops' sockets."""
    from pools.status import without_address

    sysop_frame = worker_update_frame(with_addresses=True)
    return frame_event(
        {**sysop_frame, "workers": [without_address(worker) for worker in sysop_frame["workers"]]}, sysop_frame=sysop_frame
    )


def publish_worker_change(name: str, op: str, acting_user) -> None:
    """Once committed, show every open socket the new worker list and tell pool subscribers."""
    send_event_on_commit(BROADCAST_GROUP, worker_update_event, using="default")
    send_event_on_commit(
        POOL_EVENTS, {"type": "worker.changed", "op": op, "name": name, "by": describe_actor(acting_user)}, using="default"
    )


def validate(instance, **options) -> None:
    """Run the model's `full_clean`, refusing with Invalid (the one conversion of pools'
    model validation into a BrokerError)."""
    try:
        instance.full_clean(**options)
    except ValidationError as exc:
        raise Invalid.from_django(exc) from None


def check_members(pool: PoolAlias, workers: list[Worker]) -> None:
    """Raise Invalid unless the pool has members and all serve the pool's type."""
    if not workers:
        raise Invalid(fields={"members": [f"Pool {pool.name} needs at least one member."]})
    wrong = [worker for worker in workers if worker.query_type != pool.query_type]
    if wrong:
        names = ", ".join(f"{worker.name} ({worker.query_type})" for worker in wrong)
        raise Invalid(fields={"members": [f"{pool.name} is a {pool.query_type} pool; these workers serve another type: {names}."]})


def resolve_workers(names: list[str]) -> list[Worker]:
    """Return the workers named, raising Invalid naming any that do not exist."""
    workers = {worker.name: worker for worker in Worker.objects.filter(name__in=names)}
    unknown = [name for name in names if name not in workers]
    if unknown:
        raise Invalid(fields={"members": [f"No worker named {', '.join(unknown)}."]})
    return [workers[name] for name in dict.fromkeys(names)]


def save_pool(
    pool: PoolAlias, *, members: list[str] | None = None, weights: dict[str, int] | None = None, acting_user=None
) -> PoolAlias:
    """Validate and save a pool alias and, when given, replace its members (by worker name).

    Subscribers of `events.pools` learn whether it was created, scaled (members added or
    removed, named in the event) or otherwise saved."""
    validate(pool)
    is_new = pool.pk is None
    with transaction.atomic(using="default", durable=True):
        before = [] if is_new else list(pool.memberships.values_list("worker__name", flat=True))
        if members is None:
            workers = [seat.worker for seat in pool.memberships.select_related("worker")] if pool.pk else []
            check_members(pool, workers)
            pool.save()
        else:
            workers = resolve_workers(members)
            check_members(pool, workers)
            pool.save()
            pool.memberships.exclude(worker__in=workers).delete()
            weights = weights or {}
            for worker in workers:
                PoolMember.objects.update_or_create(pool=pool, worker=worker, defaults={"weight": weights.get(worker.name, 1)})
        after = [worker.name for worker in workers]
        added = [name for name in after if name not in before]
        removed = [name for name in before if name not in after]
        op = "created" if is_new else "scaled" if added or removed else "saved"
        publish_pool_change(pool, op, acting_user, added=added, removed=removed)
    logger.info("pool %s (%s, %s) saved with %s by %s", pool, pool.query_type, pool.strategy, members, describe_actor(acting_user))
    return pool


def create_pool(
    name: str, *, query_type: str, members: list[str], strategy: str = Strategy.AUTO, realm: str = "",
    weights: dict[str, int] | None = None, acting_user=None,
) -> PoolAlias:
    """Create a pool alias; raise Invalid for a bad name, strategy, type or member list."""
    pool = PoolAlias(name=name, realm=realm, query_type=query_type, strategy=strategy)
    return save_pool(pool, members=members, weights=weights, acting_user=acting_user)


def ensure_pool(
    name: str, *, query_type: str, realm: str = "", strategy: str = Strategy.AUTO, members: list[str], acting_user=None
) -> PoolAlias:
    """Make sure the pool exists with at least these members; idempotent, keeps other members and settings."""
    pool = PoolAlias.objects.filter(name=name, realm=realm).first()
    if pool is None:
        return create_pool(name, query_type=query_type, members=members, strategy=strategy, realm=realm, acting_user=acting_user)
    current = list(pool.memberships.values_list("worker__name", flat=True))
    missing = [member for member in members if member not in current]
    if not missing:
        return pool
    return save_pool(pool, members=current + missing, acting_user=acting_user)


def delete_pool(pool: PoolAlias, *, acting_user=None) -> None:
    with transaction.atomic(using="default", durable=True):
        pool.delete()
        publish_pool_change(pool, "deleted", acting_user)
    logger.info("pool %s deleted by %s", pool, describe_actor(acting_user))


def publish_pool_change(pool: PoolAlias, op: str, acting_user, *, added=(), removed=()) -> None:
    """Once committed, show every open socket the new pool list (model choices) and publish the
    pool's change on `events.pools`, naming members added or removed."""
    event = {"type": "pool.changed", "op": op, "name": pool.name, "realm": pool.realm, "by": describe_actor(acting_user)}
    if added or removed:
        event.update(added=list(added), removed=list(removed))
    send_event_on_commit(BROADCAST_GROUP, worker_update_event, using="default")
    send_event_on_commit(POOL_EVENTS, event, using="default")


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One call of a model server and how it went: an answer or an error."""

    selection: Selection
    attempt: int
    duration: float
    lease: str
    answer: ModelAnswer | None = None
    error: ModelServerError | None = None


async def record_attempt(
    selection: Selection,
    attempt: int,
    *,
    duration: float,
    lease: str,
    answer: ModelAnswer | None = None,
    error: ModelServerError | None = None,
) -> SelectionOutcome:
    """Free the attempt's in-flight lease, count the attempt for the worker's health and
    record its outcome for the A/B report.

    The jobs in flight in this process record theirs together (`record_attempts`), on a
    thread, so the release costs the worker's event loop no round trip of its own.
    """
    return await attempts_recorder.submit(Attempt(selection, attempt, duration, lease, answer, error))


def record_attempts(attempts: list[Attempt]) -> list[SelectionOutcome | Exception]:
    """Free the attempts' leases and count them for their workers' health, in one Redis
    round trip for the batch (`state.settle_calls`), and insert their outcome rows in one
    statement; return each row, or the exception that kept it from being stored."""
    from pools import health, state

    failures = state.settle_calls([
        state.CallOutcome(
            attempt.selection.worker.name,
            ok=attempt.error is None,
            latency=attempt.answer.time_to_first_byte if attempt.answer else None,
            lease=attempt.lease,
            counted=attempt.error is None or attempt.error.is_server_fault,
        )
        for attempt in attempts
    ])
    for attempt, consecutive in zip(attempts, failures):
        if attempt.error is not None and attempt.error.is_server_fault:
            health.cool_down_after_failure(attempt.selection.worker.name, attempt.error, consecutive)
    rows = [outcome_row(attempt) for attempt in attempts]
    try:
        return insert_outcomes(rows)
    except DATABASE_OUTAGES as exc:
        # A report row is not worth the model's answer: while Postgres is unreachable the
        # rows are dropped (None) and the broken connection with them, and the query goes on.
        logger.warning("%d attempt outcome(s) not recorded, the database is unreachable: %s", len(rows), exc)
        close_old_connections()
        return [None] * len(rows)
    except (IntegrityError, DataError) as exc:
        if len(rows) == 1:
            return [exc]
    # One row the database refused must not lose the others.
    return [stored_alone(row) for row in rows]


def insert_outcomes(rows: list[SelectionOutcome]) -> list[SelectionOutcome]:
    """Insert the rows with one statement.

    `bulk_create` wraps its INSERT in a transaction: BEGIN and COMMIT, two round trips that
    a lone row, the usual batch of a worker that is not busy, does without.
    """
    if len(rows) == 1:
        rows[0].save(force_insert=True)
        return rows
    return SelectionOutcome.objects.bulk_create(rows)


def stored_alone(row: SelectionOutcome) -> SelectionOutcome | Exception:
    try:
        return insert_outcomes([row])[0]
    except (IntegrityError, DataError) as exc:
        return exc


def outcome_row(attempt: Attempt) -> SelectionOutcome:
    selection, answer, error = attempt.selection, attempt.answer, attempt.error
    return SelectionOutcome(
        pool=selection.pool.name if selection.pool else "",
        pool_realm=selection.pool.realm if selection.pool else "",
        worker=selection.worker.name,
        strategy=selection.strategy,
        realm=selection.realm,
        attempt=attempt.attempt,
        result=error.kind if error is not None else SelectionOutcome.Result.OK,
        time_to_first_byte=answer.time_to_first_byte if answer else None,
        duration=attempt.duration,
        detail=error.message if error is not None else "",
    )


attempts_recorder = Coalescer(record_attempts)


def set_blacklisted(workers, is_blacklisted: bool, *, acting_user=None) -> int:
    """Take workers out of selection (the operator's blacklist, which no probe lifts) or put
    them back; every socket then gets the new `worker_update`. Return how many changed."""
    names = [worker.name for worker in workers]
    with transaction.atomic(using="default", durable=True):
        changed = Worker.objects.filter(name__in=names).exclude(is_blacklisted=is_blacklisted).update(
            is_blacklisted=is_blacklisted
        )
        for name in names:
            publish_worker_change(name, "saved", acting_user)
    logger.info(
        "workers %s %s by %s", ", ".join(names), "blacklisted" if is_blacklisted else "restored", describe_actor(acting_user)
    )
    return changed


def end_cooldowns(workers) -> int:
    """Let operators put cooling workers back into selection at once; return how many."""
    from pools import state

    names = [worker.name for worker in workers]
    for name in names:
        state.clear_cooldown(name)
    logger.info("cooldowns ended by an operator: %s", ", ".join(names))
    return len(names)


# Rows deleted per statement when pruning, so a large backlog never holds one long lock.
PRUNE_BATCH = 10_000


def prune_outcomes(*, older_than_days: float) -> int:
    """Delete attempt outcomes older than `older_than_days`; return how many went.

    Every model call adds a row, so without a retention the A/B table grows with every
    query served (at hundreds of queries a second, tens of millions of rows a day).
    """
    cutoff = timezone.now() - datetime.timedelta(days=older_than_days)
    deleted = 0
    while True:
        batch = list(SelectionOutcome.objects.filter(created_at__lt=cutoff).values_list("id", flat=True)[:PRUNE_BATCH])
        if not batch:
            return deleted
        deleted += SelectionOutcome.objects.filter(id__in=batch).delete()[0]


def record_health_samples(*, retention_hours: float) -> int:
    """Sample every worker's score, state, latency and load now, and delete samples older
    than `retention_hours`, so the table stays bounded; return how many were taken."""
    from pools.status import member_rows

    now = timezone.now()
    workers = list(Worker.objects.all())
    samples = [
        HealthSample(
            worker=row["name"], score=row["health_score"], latency=row["latency"], success_rate=row["success_rate"],
            in_flight=row["in_flight"], created_at=now,
            state=(
                HealthSample.State.BLACKLISTED if row["is_blacklisted"]
                else HealthSample.State.COOLING if row["cooldown_until"] else HealthSample.State.SERVING
            ),
        )
        for row in member_rows(None, workers)
    ]
    with transaction.atomic(using="default", durable=True):
        HealthSample.objects.bulk_create(samples)
        HealthSample.objects.filter(created_at__lt=now - datetime.timedelta(hours=retention_hours)).delete()
    return len(samples)
