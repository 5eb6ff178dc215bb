"""The RQ job that runs one query: select, call, store and charge, then push the frame."""
import logging
import time

from asgiref.sync import async_to_sync
from django.conf import settings
from rq import Callback
from rq.timeouts import JobTimeoutException

from accounts.actions.queries import Failure, fail_queries, fail_query, finish_queries, start_queries
from accounts.billing import Answer
from pools.clients import ModelRequest, ModelServerError
from pools.dispatch import serve
from pools.selection import NoWorkerAvailable
from rentahal.batching import Coalescer
from rentahal.metrics import record_query_outcome
from rentahal.pushes import push_frame
from rentahal.queues import get_queue

logger = logging.getLogger(__name__)

# The jobs in flight in one worker process start, finish and fail their queries together:
# one statement per shard for each batch instead of one transaction per query.
starts = Coalescer(start_queries)
finishes = Coalescer(finish_queries)
failures = Coalescer(fail_queries)


def enqueue_query(query, queue_name: str) -> None:
    """Put the query's job on its realm's queue in one round trip; the job id is the query
    id, so reruns replace."""
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
    """Run the query once; a rerun of a finished query does nothing and charges nothing."""
    query = await starts.submit(query_id)
    if query is None:
        return "already finished"
    guid = query.user_id
    request = ModelRequest(
        prompt=query.prompt,
        query_type=query.query_type,
        model_type=query.model_type,
        model_name=query.model_name,
        image=query.image or None,
    )

    async def forward_chunk(text: str) -> None:
        await push_frame(guid, {"type": "query_chunk", "query_id": query_id, "chunk": text})

    started = time.monotonic()
    try:
        served = await serve(request, realm=query.realm, affinity_key=guid, on_chunk=forward_chunk)
    except (NoWorkerAvailable, ModelServerError) as exc:
        await finish_with_failure(query_id, guid, str(exc))
        return "failed"
    finished = await finishes.submit(
        Answer(query, result=served.answer.result, result_type=served.answer.result_type, worker=served.worker)
    )
    if finished is not None:
        record_query_outcome(
            finished.realm,
            worker=served.worker,
            processing_time=finished.processing_time,
            ok=True,
            cross_realm=served.is_cross_realm,
            busy_seconds=time.monotonic() - started,
        )
        await push_frame(
            guid,
            {
                "type": "query_result",
                "query_id": query_id,
                "result": finished.result,
                "result_type": finished.result_type,
                "processing_time": finished.processing_time,
                "cost": float(finished.cost),
                "worker": finished.worker,
            },
        )
    return "done"


async def finish_with_failure(query_id: str, guid: str, reason: str) -> None:
    failed = await failures.submit(Failure(query_id, reason))
    if failed is not None:
        record_query_outcome(failed.realm, worker="", processing_time=failed.processing_time, ok=False)
        await push_frame(guid, {"type": "error", "message": f"Query failed: {reason}", "query_id": query_id})


def fail_crashed_query(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback: a job that crashed or timed out still ends as a recorded failure."""
    query_id = job.args[0]
    logger.error("query %s job crashed: %s: %s", query_id, exc_type.__name__, exc_value)
    if issubclass(exc_type, JobTimeoutException):
        reason = f"no answer within {job.timeout} seconds"
    else:
        reason = f"internal error ({exc_type.__name__})"
    query = fail_query(query_id, error=reason)
    if query is not None:
        record_query_outcome(query.realm, worker="", processing_time=query.processing_time, ok=False)
        async_to_sync(push_frame)(query.user_id, {"type": "error", "message": f"Query failed: {reason}", "query_id": query_id})
