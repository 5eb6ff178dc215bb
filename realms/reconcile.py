"""The reconciler: every accepted query ends in a result or a recorded failure.

Postgres is the record and Redis may lose a job: a crash between commit and enqueue, a
Redis flush, a worker killed between popping job ids and starting them, a worker killed
mid-call. Each pass finds unfinished queries whose job is gone, lost or dead and re-enqueues
(`realms.lifecycle.enqueue_query`) or fails them (`realms.lifecycle.fail_query`, which
tells the user with an `error` frame). The bound this gives is in README.md, "Lost work is
re-run".
"""
import datetime
import logging
import time

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from accounts.actions.queries import unfinished_queries_older_than
from realms.lifecycle import MAX_ATTEMPTS, enqueue_query, fail_query
from realms.models import Realm
from rentahal.queues import get_queue, redis_connection

logger = logging.getLogger(__name__)

DEAD_JOB_STATUSES = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED}
# Seconds between the two looks that tell a lost pop from a pop under way: a live worker
# starts the jobs it popped (status `started`) within milliseconds.
LOST_POP_CONFIRM_SECONDS = 1.0


def reconcile_queries() -> dict[str, int]:
    """Re-enqueue or fail stale unfinished queries; return how many of each."""
    # A pass after a Postgres restart must not fail on the connection the restart broke.
    close_old_connections()
    queue_names = {realm.name: realm.queue_name for realm in Realm.objects.all()}
    connection = redis_connection()
    counts = {"requeued": 0, "failed": 0}
    for queue_name in queue_names.values():
        # Jobs whose worker stopped renewing them (it died mid-call) are re-enqueued by RQ
        # while they have retries left; the last one is failed through the failure callback.
        # The timer penalty bounds the callback from any thread (signals need the main one).
        StartedJobRegistry(queue_name, connection=connection, death_penalty_class=TimerDeathPenalty).cleanup()
        counts["requeued"] += enqueue_overdue_reruns(queue_name, connection)
    cutoff = timezone.now() - datetime.timedelta(seconds=settings.RENTAHAL_RECONCILE_AFTER)
    stale = []
    for query in unfinished_queries_older_than(cutoff):
        if query.realm in queue_names:
            stale.append(query)
        else:
            end_query(query, f"its realm {query.realm} no longer exists", counts)
    statuses = job_statuses(connection, stale)
    popped = lost_pops(connection, stale, statuses, queue_names)
    if popped:
        # A pop under way gets the time to start its jobs; those it started are alive.
        time.sleep(LOST_POP_CONFIRM_SECONDS)
        confirmed = lost_pops(connection, popped, job_statuses(connection, popped), queue_names)
        if confirmed:
            logger.warning("%d job(s) were popped by a worker that died before starting them", len(confirmed))
        popped_ids = {query.pk for query in popped}
        confirmed_ids = {query.pk for query in confirmed}
        # Treated as jobs that are gone, like the ones Redis lost.
        statuses.update({query.pk: None for query in confirmed})
        statuses.update({query_id: JobStatus.STARTED for query_id in popped_ids - confirmed_ids})
    for query in stale:
        status = statuses[query.pk]
        if status is None and query.attempts < MAX_ATTEMPTS:
            logger.warning("query %s had no live job; re-enqueued on %s", query.id, queue_names[query.realm])
            enqueue_query(query, queue_names[query.realm])
            counts["requeued"] += 1
        elif status is None:
            end_query(query, f"it was lost {query.attempts} times", counts)
        elif status in DEAD_JOB_STATUSES:
            end_query(query, f"its job ended as {status} without a result", counts)
    return counts


def enqueue_overdue_reruns(queue_name: str, connection) -> int:
    """Enqueue the reruns RQ's scheduler should have enqueued RECONCILE_AFTER seconds ago
    and did not, and return how many.

    A rerun after a crash waits in the queue's scheduled registry for a realm worker's
    scheduler to enqueue it. That scheduler is a forked process which dies with its worker
    or on a Redis restart, and RQ starts it again only at its ten-minute maintenance; the
    job's status meanwhile says `scheduled`, which the reconciler takes as alive. Each job is
    taken out of the registry first (ZREM), so a scheduler that wakes up meanwhile and this
    pass never both enqueue it.
    """
    queue = get_queue(queue_name)
    registry = ScheduledJobRegistry(queue=queue)
    overdue = registry.get_jobs_to_schedule(time.time() - settings.RENTAHAL_RECONCILE_AFTER)
    enqueued = 0
    for job_id in overdue:
        if not registry.remove(job_id):
            continue
        try:
            job = Job.fetch(job_id, connection=connection)
        except NoSuchJobError:
            continue
        logger.warning("query %s: its rerun was due and no scheduler enqueued it; enqueued on %s", job_id, queue_name)
        queue.enqueue_job(job, at_front=job.should_enqueue_at_front())
        enqueued += 1
    return enqueued


def end_query(query, reason: str, counts: dict[str, int]) -> None:
    if async_to_sync(fail_query)(query.id, reason) is not None:
        counts["failed"] += 1


def job_statuses(connection, queries) -> dict:
    """Return each query's job status, None where its job is gone, in one round trip."""
    with connection.pipeline(transaction=False) as pipeline:
        for query in queries:
            pipeline.hget(Job.key_for(str(query.pk)), "status")
        raw = pipeline.execute()
    return {query.pk: JobStatus(status.decode()) if status else None for query, status in zip(queries, raw)}


def lost_pops(connection, queries, statuses: dict, queue_names: dict[str, str]) -> list:
    """Return the queries whose job says `queued` but is in no queue: a worker popped it and
    has not started it (RQ would have marked it `started`), or died before it could."""
    waiting = [query for query in queries if statuses[query.pk] == JobStatus.QUEUED]
    if not waiting:
        return []
    realms = sorted({query.realm for query in waiting})
    with connection.pipeline(transaction=False) as pipeline:
        for realm in realms:
            pipeline.lrange(get_queue(queue_names[realm]).key, 0, -1)
        queued = {realm: {job_id.decode() for job_id in ids} for realm, ids in zip(realms, pipeline.execute())}
    return [query for query in waiting if str(query.pk) not in queued[query.realm]]
