"""A query's life, in order: accept (row in Postgres), enqueue (job on the realm's queue),
then in the worker start, serve, and finish or fail. Each step has its one function here;
the rows are written by `accounts.actions.queries`.

`accept_query` runs in the web process and calls `enqueue_query`; the job, `run_query`,
calls `start_query`, then `finish_query` or `fail_query`. Every way a query ends
unanswered (no worker, a crashed job, the reconciler giving up, the sysop) goes through
`fail_query`, so the user is told and nothing is charged.
"""
import logging
import time
import uuid

from asgiref.sync import async_to_sync
from django.conf import settings
from rq import Callback
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from accounts.actions import queries
from accounts.actions.queries import Answer, Failure
from accounts.actions.users import find_user
from accounts.models import Query, User
from pools.clients import ModelRequest, ModelServerError
from pools.health import serving_workers
from pools.dispatch import Served, serve
from pools.selection import NoWorkerAvailable
from realms.frames import QuerySubmission
from realms.routing import route_query
from rentahal.batching import Coalescer
from rentahal.errors import Forbidden
from rentahal.metrics import record_query_outcome
from rentahal.pushes import push_frame
from rentahal.queues import get_queue

logger = logging.getLogger(__name__)

# The jobs in flight in one worker process start, finish and fail their queries together:
# one statement per shard for each batch instead of one transaction per query.
starts = Coalescer(queries.start_queries)
finishes = Coalescer(queries.finish_queries)
failures = Coalescer(queries.fail_queries)


def accept_query(guid: str, submission: QuerySubmission) -> dict:
    """Route the query to a realm, write its row, enqueue its job, and return the
    `queue_update` frame for the client.

    The row is committed before the job exists: a crash in between leaves an accepted row
    that `realms.reconcile` enqueues later, never a job without its query.
    """
    realm, depth = route_query(submission.query_type)
    query = queries.accept_query(
        guid,
        query_type=submission.query_type,
        prompt=submission.prompt,
        model_type=submission.model_type,
        model_name=submission.model_name,
        image=submission.image,
        realm=realm.name,
    )
    enqueue_query(query, realm.queue_name)
    return {
        "type": "queue_update",
        "depth": depth + 1,
        "total": len(serving_workers(realm.name, submission.query_type)),
        "query_id": str(query.id),
        "realm": realm.name,
    }


def enqueue_query(query: Query, queue_name: str) -> None:
    """Put the query's job on its realm's queue in one round trip; the job id is the query
    id, so enqueueing again replaces the job instead of adding a second one."""
    queue = get_queue(queue_name)
    with queue.connection.pipeline() as pipeline:
        queue.enqueue_call(
            run_query,
            args=(str(query.id),),
            job_id=str(query.id),
            timeout=settings.RENTAHAL_JOB_TIMEOUT,
            result_ttl=300,
            failure_ttl=86400,
            on_failure=Callback(fail_crashed_query),
            pipeline=pipeline,
        )
        pipeline.execute()


async def run_query(query_id: str) -> str:
    """The RQ job: start the query, serve it, then finish or fail it.

    A rerun of a finished query does nothing and charges nothing.
    """
    query = await start_query(query_id)
    if query is None:
        return "already finished"
    began = time.monotonic()
    try:
        served = await serve_query(query)
    except NoWorkerAvailable as exc:
        await fail_query(query_id, exc.message)
        return "failed"
    except ModelServerError as exc:
        # The server's own words went to the operators' log and the attempt's outcome row.
        await fail_query(query_id, exc.public_reason)
        return "failed"
    await finish_query(query, served, busy_seconds=time.monotonic() - began)
    return "done"


async def start_query(query_id: str) -> Query | None:
    """Mark the query running and return it, or None if it is already finished."""
    return await starts.submit(query_id)


async def serve_query(query: Query) -> Served:
    """Have a worker answer the query, streaming its chunks to the user's sockets."""
    guid = query.user_id

    async def forward_chunk(text: str) -> None:
        await push_frame(guid, {"type": "query_chunk", "query_id": str(query.id), "chunk": text})

    request = ModelRequest(
        prompt=query.prompt,
        query_type=query.query_type,
        model_type=query.model_type,
        model_name=query.model_name,
        image=query.image or None,
    )
    return await serve(request, realm=query.realm, affinity_key=guid, on_chunk=forward_chunk)


async def finish_query(query: Query, served: Served, *, busy_seconds: float) -> None:
    """Store the answer and charge for it, count it, then push `query_result`; a query
    finished meanwhile (a rerun, the sysop) is left as it was and nothing is pushed."""
    answer = Answer(query, result=served.answer.result, result_type=served.answer.result_type, worker=served.worker)
    finished = await finishes.submit(answer)
    if finished is None:
        return
    record_query_outcome(
        finished.realm,
        worker=served.worker,
        processing_time=finished.processing_time,
        ok=True,
        cross_realm=served.is_cross_realm,
        busy_seconds=busy_seconds,
    )
    await push_frame(
        finished.user_id,
        {
            "type": "query_result",
            "query_id": str(finished.id),
            "result": finished.result,
            "result_type": finished.result_type,
            "processing_time": finished.processing_time,
            "cost": float(finished.cost),
            "worker": finished.worker,
        },
    )


async def fail_query(query_id: uuid.UUID | str, reason: str) -> Query | None:
    """Record the failure with a reason the user reads (nothing is charged), count it and
    push an `error` frame; return the query, or None if it was already finished.

    Callers outside the worker's event loop use `async_to_sync(fail_query)`: the write then
    runs on the caller's own thread and database connection.
    """
    failed = await failures.submit(Failure(query_id, reason))
    if failed is None:
        return None
    record_query_outcome(failed.realm, worker="", processing_time=failed.processing_time, ok=False)
    await push_frame(
        failed.user_id,
        {"type": "error", "code": "query_failed", "message": f"Query failed: {reason}", "query_id": str(failed.id)},
    )
    return failed


def fail_crashed_query(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback: a job that crashed or timed out still ends as a recorded failure."""
    query_id = job.args[0]
    logger.error("query %s job crashed: %s: %s", query_id, exc_type.__name__, exc_value)
    if issubclass(exc_type, JobTimeoutException):
        reason = f"no answer within {job.timeout} seconds"
    else:
        reason = f"internal error ({exc_type.__name__})"
    async_to_sync(fail_query)(query_id, reason)


def terminate_queries(guid: str, *, acting_user: User) -> int:
    """Fail every unfinished query of the user and stop their jobs; return how many ended."""
    if not acting_user.is_sysop:
        raise Forbidden("Only a sysop may terminate queries.")
    target = find_user(guid)
    ended = 0
    for query in queries.unfinished_queries(target.guid):
        stop_job(str(query.id))
        if async_to_sync(fail_query)(query.id, "terminated by the sysop") is not None:
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
