"""Accepting queries into realms, and what the sysop may do to queries in flight."""
import logging

from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

from accounts import actions as accounts
from accounts.models import User
from pools.actions import count_available_workers
from realms.frames import QuerySubmission
from realms.jobs import enqueue_query
from realms.routing import check_room, realm_for_query_type
from rentahal.errors import Forbidden
from rentahal.queues import get_queue

logger = logging.getLogger(__name__)


def submit_query(user: User, submission: QuerySubmission) -> dict:
    """Accept the query into its realm and return the `queue_update` frame for the client."""
    if user.is_banned:
        raise Forbidden("You are banned from this service.")
    realm = realm_for_query_type(submission.query_type)
    depth = check_room(realm)
    query = accounts.accept_query(
        user,
        query_type=submission.query_type,
        prompt=submission.prompt,
        model_type=submission.model_type,
        model_name=submission.model_name,
        image=submission.image,
        realm=realm.name,
        on_accepted=lambda accepted: enqueue_query(accepted, realm.queue_name),
    )
    return {
        "type": "queue_update",
        "depth": depth + 1,
        "total": count_available_workers(submission.query_type),
        "query_id": str(query.id),
        "realm": realm.name,
    }


def terminate_queries(guid: str, *, acting_user: User) -> int:
    """Fail every unfinished query of the user and stop their jobs; return how many ended."""
    if not acting_user.is_sysop:
        raise Forbidden("Only a sysop may terminate queries.")
    target = accounts.find_user(guid)
    ended = 0
    for query in accounts.unfinished_queries(target.guid):
        stop_job(str(query.id))
        if accounts.fail_query(query.id, error="terminated by the sysop") is not None:
            ended += 1
    return ended


def stop_job(job_id: str) -> None:
    """Cancel a job still waiting in its queue.

    A job already running is left to end: its query row is finished first, so whatever it
    returns is discarded by `finish_query` and nothing is charged.
    """
    try:
        job = Job.fetch(job_id, connection=get_queue("default").connection)
    except NoSuchJobError:
        return
    if job.get_status(refresh=False) == "queued":
        try:
            job.cancel()
        except InvalidJobOperation:
            logger.info("job %s started before it could be cancelled", job_id)
