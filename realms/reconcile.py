"""The reconciler: every accepted query ends in a result or a recorded failure.

Postgres is the record and Redis may lose a job (a crash between commit and enqueue, a
Redis restart, a worker killed mid-call). This pass finds unfinished queries whose job is
gone or dead and re-enqueues or fails them.
"""
import datetime
import logging

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from accounts.actions.queries import unfinished_queries_older_than
from realms.lifecycle import enqueue_query, fail_query
from realms.models import Realm
from rentahal.queues import get_queue

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
DEAD_JOB_STATUSES = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FINISHED}


def reconcile_queries() -> dict[str, int]:
    """Re-enqueue or fail stale unfinished queries; return how many of each."""
    queue_names = {realm.name: realm.queue_name for realm in Realm.objects.all()}
    connection = get_queue("default").connection
    for queue_name in queue_names.values():
        # Moves jobs of workers that died mid-call to the failed registry, which runs
        # the failure callback and so records the failure.
        StartedJobRegistry(queue_name, connection=connection).cleanup()
    cutoff = timezone.now() - datetime.timedelta(seconds=settings.RENTAHAL_RECONCILE_AFTER)
    counts = {"requeued": 0, "failed": 0}
    for query in unfinished_queries_older_than(cutoff):
        try:
            status = Job.fetch(str(query.id), connection=connection).get_status()
        except NoSuchJobError:
            status = None
        if status is not None and status not in DEAD_JOB_STATUSES:
            continue
        queue_name = queue_names.get(query.realm)
        if status is None and queue_name and query.attempts < MAX_ATTEMPTS:
            logger.warning("query %s had no job; re-enqueued on %s", query.id, queue_name)
            enqueue_query(query, queue_name)
            counts["requeued"] += 1
        elif async_to_sync(fail_query)(query.id, lost_reason(query, status, queue_name)) is not None:
            counts["failed"] += 1
    return counts


def lost_reason(query, status, queue_name) -> str:
    if queue_name is None:
        return f"its realm {query.realm} no longer exists"
    if status is None:
        return f"it was lost {query.attempts} times"
    return f"its job ended as {status} without a result"
