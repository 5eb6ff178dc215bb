"""Queries whose jobs RQ recorded as failed (a crash, a timeout, a worker that died on every
run), joined to their rows for the operators' "failed queries" page, and the two things an
operator may do with one: retry it or discard it.

A retry is a new submission of the same question through `realms.lifecycle.accept_query`,
the path every query takes, under an idempotency key made from the failed query's id: the
failed row stays as it was (it is history), and retrying twice makes one query, charged at
most once, like any other.
"""
import dataclasses
import datetime
import logging

from django.core.exceptions import ValidationError
from rq.job import Job

from accounts.models import Query
from realms import lifecycle
from realms.frames import QuerySubmission
from realms.models import Realm
from rentahal.actors import describe_actor
from rentahal.errors import NotFound
from rentahal.queues import get_queue

logger = logging.getLogger(__name__)

SHOWN = 200


@dataclasses.dataclass(frozen=True)
class FailedQuery:
    job_id: str
    realm: str
    queue_name: str
    failed_at: datetime.datetime | None
    reason: str
    query: Query | None

    @property
    def user(self) -> str:
        return str(self.query.user) if self.query else "-"

    @property
    def worker(self) -> str:
        return (self.query.worker if self.query else "") or "-"


def last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failed_queries() -> list[FailedQuery]:
    """Return every realm's failed jobs (newest first, at most SHOWN a realm) with their queries."""
    found = []
    for realm in Realm.objects.order_by("name"):
        queue = get_queue(realm.queue_name)
        ids = queue.failed_job_registry.get_job_ids(0, SHOWN - 1, desc=True)
        for job_id, job in zip(ids, Job.fetch_many(ids, connection=queue.connection)):
            query = Query.objects.select_related("user").filter(pk=job_id).first() if is_query_id(job_id) else None
            reason = (query.error if query is not None and query.error else "") or last_line(job.exc_info if job else "")
            found.append(FailedQuery(
                job_id=job_id, realm=realm.name, queue_name=realm.queue_name,
                failed_at=job.ended_at if job else None, reason=reason or "-", query=query,
            ))
    return found


def is_query_id(job_id: str) -> bool:
    try:
        Query._meta.pk.to_python(job_id)
    except ValidationError:
        return False
    return True


def find_failed(job_id: str, queue_name: str) -> Job:
    queue = get_queue(queue_name)
    if job_id not in queue.failed_job_registry:
        raise NotFound(f"No failed job {job_id} in {queue_name}.", code="unknown_failed_job")
    return Job.fetch(job_id, connection=queue.connection)


def retry_failed_query(job_id: str, queue_name: str, *, acting_user) -> dict:
    """Submit the failed query's question again through the normal path; return its `queue_update`."""
    find_failed(job_id, queue_name)
    query = Query.objects.filter(pk=job_id).first()
    if query is None:
        raise NotFound(f"Job {job_id} has no query to retry.", code="unknown_query")
    submission = QuerySubmission(
        prompt=query.prompt, query_type=query.query_type, model_type=query.model_type, model_name=query.model_name,
        image=query.image, idempotency_key=f"retry:{query.id}",
    )
    frame = lifecycle.accept_query(query.user_id, submission)
    get_queue(queue_name).failed_job_registry.remove(job_id, delete_job=True)
    logger.info("failed query %s retried as %s by %s", job_id, frame.get("query_id"), describe_actor(acting_user))
    return frame


def discard_failed_job(job_id: str, queue_name: str, *, acting_user) -> None:
    """Forget RQ's record of the failed job; the query's row keeps its failure."""
    find_failed(job_id, queue_name)
    get_queue(queue_name).failed_job_registry.remove(job_id, delete_job=True)
    logger.info("failed job %s discarded by %s", job_id, describe_actor(acting_user))
