"""A query's life, in order: accept (row in Postgres), enqueue (job on the realm's queue),
then in the worker start, serve, and finish or fail. Each step has its one function here;
the rows are written by `accounts.actions.queries`.

`accept_query` runs in the web process and calls `enqueue_query`; the job, `run_query`,
calls `start_query`, then `finish_query` or `fail_query`. Every way a query ends
unanswered (no worker, a crashed job, the reconciler giving up, the sysop) goes through
`fail_query`, so the user is told and nothing is charged.
"""
import asyncio
import dataclasses
import logging
import time
import uuid

from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone
from rq import Callback, Retry
from rq.command import send_stop_job_command
from rq.exceptions import AbandonedJobError, InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.timeouts import JobTimeoutException

from accounts.actions import queries
from accounts.actions.queries import Answer, Failure
from accounts.actions.users import find_user
from accounts.models import Query, User
from pools.clients import ModelRequest, ModelServerError
from pools.health import serving_peers, serving_workers
from pools.dispatch import Served, check_hosted_query, serve
from pools.models import broker_of_worker
from pools.selection import NoWorkerAvailable
from realms.chunks import redis_client
from realms.frames import QuerySubmission
from realms.routing import RealmFull, find_realm, queue_depth, route_query
from realms.speech import Spoken, serve_speech
from rentahal.batching import Coalescer
from rentahal.db_threads import on_db_thread
from rentahal.errors import DATABASE_OUTAGES, STORE_OUTAGES, BrokerError, Forbidden
from rentahal.metrics import QueryOutcome, record_query_outcomes
from rentahal.pushes import push_frame, stream_query_chunks
from rentahal.query_context import QueryContext, serving_query
from rentahal.query_types import QueryType
from rentahal.queues import JobDeferred, get_queue

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Finishing:
    """An answer to store, with what the realm's metrics count of it besides the stored row:
    how long its job was busy and whether a worker of another realm gave it."""

    answer: Answer
    busy_seconds: float = 0.0
    is_cross_realm: bool = False


def finish_and_count(items: list[Finishing]) -> list[Query | None | Exception]:
    """Store the answers (`queries.finish_queries`), then count the queries stored in their
    realms' metrics, in the same batch and thread: each is counted before its answer is
    pushed, in one Redis round trip per batch that the worker's event loop does not wait on."""
    finished = queries.finish_queries([item.answer for item in items])
    record_query_outcomes([
        QueryOutcome(
            query.realm, query.worker, query.processing_time, ok=True,
            cross_realm=item.is_cross_realm, busy_seconds=item.busy_seconds,
        )
        for item, query in zip(items, finished)
        if isinstance(query, Query)
    ])
    return finished


def fail_and_count(failures: list[Failure]) -> list[Query | None | Exception]:
    """Record the failures (`queries.fail_queries`), then count the queries failed, as
    `finish_and_count` does."""
    failed = queries.fail_queries(failures)
    record_query_outcomes(
        [QueryOutcome(query.realm, "", query.processing_time, ok=False) for query in failed if isinstance(query, Query)]
    )
    return failed


# The jobs in flight in one worker process start, finish and fail their queries together:
# one statement per shard for each batch instead of one transaction per query.
starts = Coalescer(queries.start_queries)
finishes = Coalescer(finish_and_count)
failures = Coalescer(fail_and_count)
waits = Coalescer(queries.return_queries_to_waiting)

# Runs of a query's job: the first, then RQ's retries of a job whose worker died under it
# (`rq.registry.StartedJobRegistry.cleanup`) or that crashed; the reconciler's re-enqueues of
# a lost job stop at the same count (`realms.reconcile`).
MAX_ATTEMPTS = 3
# Seconds RQ waits before each rerun (its scheduler, which every realm worker runs, enqueues it).
RERUN_PAUSES = [1, 5]
# The option (accounts.Query.options) that keeps a query its full realm gave to peer brokers
# with them on every run: a rerun's job may be made anew from the row (`realms.reconcile`).
PEERS_ONLY = "peers_only"
# Seconds of the first pause before a failed write is tried again; each later pause doubles,
# up to the last, until `RENTAHAL_DB_RETRY_SECONDS` have passed.
FIRST_WRITE_RETRY_PAUSE = 0.25
LAST_WRITE_RETRY_PAUSE = 4.0


def accept_query(guid: str, submission: QuerySubmission, *, conversation_id: str = "") -> dict:
    """Route the query to a realm, write its row, enqueue its job, and return the
    `queue_update` frame for the client.

    `conversation_id` names the client's conversation: it is kept on the row, so every run
    of the query (a rerun too) asks the pool for the member that served the conversation
    before (the `affinity` strategy). A query for a hosted provider that no worker could
    serve is refused here, before anything is written (`pools.dispatch.check_hosted_query`).

    The row is committed before the job exists: a crash in between leaves an accepted row
    that `realms.reconcile` enqueues later, never a job without its query. A submission
    whose idempotency key names a query already accepted is answered with that query's
    frame instead (`frame_for_resubmitted`): nothing is enqueued or charged a second time.
    Every door (the socket's `idempotency_key`, an HTTP `Idempotency-Key`) comes through here.

    Redis may go down at any step. Everything read from it comes before the row: an outage
    there refuses the submission with nothing written (the door says `temporarily_unavailable`).
    After the commit only the enqueue needs Redis; if that fails the query is acknowledged
    all the same and the reconciler enqueues it once Redis is back, because a refusal would
    have the user submit again a query that is going to run.

    A query its realm and every backup are too full to take goes to the peer brokers that
    advertised its type, if any is active (`realm_full` otherwise): its job goes to the front
    of the realm's queue and is served by peers only, so it neither waits behind the queue
    nor takes a local worker from the queries in it. That is kept on the query
    (`options["peers_only"]`), so every later run of it, a rerun after a crash or the
    reconciler's, is served by peers only too. Speech is never sent to peers (their
    route carries no audio), so no peer serves a speech query and a full speech realm refuses.
    """
    try:
        realm, depth = route_query(submission.query_type)
        peers_only = False
    except RealmFull as full:
        peers = serving_peers(submission.query_type)
        if not peers:
            raise
        realm, depth, peers_only = full.realm, 0, True
    check_hosted_query(
        submission.query_type, realm.name, model_type=submission.model_type, model_name=submission.model_name
    )
    total = len(peers) if peers_only else len(serving_workers(realm.name, submission.query_type))
    options = {**submission.options, PEERS_ONLY: True} if peers_only else submission.options
    try:
        query = queries.accept_query(
            guid,
            query_type=submission.query_type,
            prompt=submission.prompt,
            model_type=submission.model_type,
            model_name=submission.model_name,
            image=submission.image,
            audio=submission.audio,
            audio_format=submission.audio_format,
            speech_task=submission.speech_task,
            realm=realm.name,
            idempotency_key=submission.idempotency_key,
            conversation_id=conversation_id,
            options=options,
            api_key=submission.api_key,
        )
    except queries.Resubmitted as resubmitted:
        return frame_for_resubmitted(resubmitted.query)
    try:
        enqueue_query(query, realm.queue_name)
    except STORE_OUTAGES as exc:
        logger.warning("query %s accepted while Redis is down; the reconciler will enqueue it: %s", query.pk, exc)
    return queue_update(query.id, query.realm, depth=depth + 1, total=total)


def queue_update(query_id, realm: str, *, depth: int, total: int) -> dict:
    """Return the frame that tells a waiting query's user its place (`depth`, 1 = next)."""
    return {
        "type": "queue_update",
        "depth": depth,
        "total": total,
        "query_id": str(query_id),
        "realm": realm,
    }


def frame_for_resubmitted(query: Query) -> dict:
    """Return what the first submission of `query` has led to by now: its `query_result`,
    its failure's `error`, or, while it is unfinished, its `queue_update` again."""
    if query.status in Query.FINISHED:
        return final_frame(query)
    return queue_update(
        query.id, query.realm,
        depth=queue_depth(find_realm(query.realm)), total=len(serving_workers(query.realm, query.query_type)),
    )


def enqueue_query(query: Query, queue_name: str) -> None:
    """Put the query's job on its realm's queue in one round trip; the job id is the query
    id, so enqueueing again replaces the job instead of adding a second one. A job for peers
    only (`accept_query`) goes to the front: it waits for no local worker."""
    peers_only = is_peers_only(query)
    queue = get_queue(queue_name)
    with queue.connection.pipeline() as pipeline:
        queue.enqueue_call(
            run_query,
            args=(str(query.id),),
            at_front=peers_only,
            job_id=str(query.id),
            # Whose sockets hear its place in the queue (realms.positions).
            meta={"user": query.user_id},
            timeout=settings.RENTAHAL_JOB_TIMEOUT,
            result_ttl=300,
            failure_ttl=86400,
            on_failure=Callback(fail_crashed_query),
            # A pause before each rerun, so a crash caused by an outage does not spend them all at once.
            retry=Retry(max=MAX_ATTEMPTS - 1, interval=RERUN_PAUSES),
            pipeline=pipeline,
        )
        pipeline.execute()


def is_peers_only(query: Query) -> bool:
    """Return whether the query is for peer brokers only (`accept_query`: its realm was full)."""
    return bool(query.options.get(PEERS_ONLY))


async def run_query(query_id: str) -> str:
    """The RQ job: start the query, serve it (by peer brokers only when its realm was full),
    then finish or fail it.

    A rerun of a finished query does nothing and charges nothing. A query whose members
    are all busy goes back to waiting (`WaitingForWorker`) until RENTAHAL_QUEUE_WAIT_LIMIT
    seconds after its acceptance, then fails.
    """
    query = await start_query(query_id)
    if query is None:
        return "already finished"
    began = time.monotonic()
    produced: list[str] = []
    try:
        served = await serve_query(query, produced)
    except QueryCancelled:
        await finish_cancelled(query, "".join(produced), seconds=time.monotonic() - began)
        return "cancelled"
    except NoWorkerAvailable as exc:
        if exc.is_busy and waited_seconds(query) < settings.RENTAHAL_QUEUE_WAIT_LIMIT:
            await write_through_outage(waits, query_id)
            raise WaitingForWorker(exc.message) from None
        await fail_query(query_id, busy_failure(exc, query) if exc.is_busy else exc.message)
        return "failed"
    except BrokerError as exc:
        # A speech query that heard no words.
        await fail_query(query_id, exc.message)
        return "failed"
    except ModelServerError as exc:
        # The server's own words went to the operators' log and the attempt's outcome row.
        await fail_query(query_id, exc.public_reason)
        return "failed"
    await finish_query(query, served, busy_seconds=time.monotonic() - began)
    return "done"


class WaitingForWorker(JobDeferred):
    """Raised by `run_query` to put its job back on the realm's queue: every member the query
    may use is busy. `fail_crashed_query` has RQ run it again without spending a rerun."""


def waited_seconds(query: Query) -> float:
    return (timezone.now() - query.accepted_at).total_seconds()


def busy_failure(exc: NoWorkerAvailable, query: Query) -> str:
    limit = settings.RENTAHAL_QUEUE_WAIT_LIMIT
    return f"{exc.message} It waited {waited_seconds(query):.0f} seconds for a free one (the limit is {limit:g})."


async def start_query(query_id: str) -> Query | None:
    """Mark the query running and return it, or None if it is already finished."""
    return await write_through_outage(starts, query_id)


async def serve_query(query: Query, produced: list[str] | None = None) -> Served:
    """Have a worker answer the query (a speech query: its steps, realms.speech), streaming
    its chunks to the user's sockets (and keeping them in `produced`); a query whose HTTP
    client went away (`cancel_query`) stops at its next chunk with QueryCancelled."""
    watch = CancelWatch(query.id) if query.options.get("stream") else None
    async with stream_query_chunks(query.user_id, str(query.id)) as push_chunk:

        async def forward_chunk(text: str) -> None:
            if produced is not None:
                produced.append(text)
            if watch is not None and await watch.is_cancelled():
                raise QueryCancelled(str(query.id))
            await push_chunk(text)

        async def tell_place(place: int) -> None:
            """Push the query's place in a busy pool's line; a courtesy, so a push lost to an
            outage is only logged."""
            try:
                total = len(await on_db_thread(serving_workers)(query.realm, query.query_type))
                await push_frame(query.user_id, queue_update(query.id, query.realm, depth=place, total=total))
            except STORE_OUTAGES as exc:
                logger.warning("query %s: its place in line not pushed: %s", query.id, exc)

        if query.query_type == QueryType.SPEECH:
            return await serve_speech(query, on_chunk=forward_chunk)
        request = ModelRequest(
            prompt=query.prompt,
            query_type=query.query_type,
            model_type=query.model_type,
            model_name=query.model_name,
            image=query.image or None,
            options=query.options,
        )
        with serving_query(QueryContext(str(query.id), query.user_id)):
            return await serve(
                request,
                realm=query.realm,
                affinity_key=affinity_key_of(query),
                on_chunk=forward_chunk,
                party=query.user_id,
                waiter=str(query.id),
                peers_only=is_peers_only(query),
                on_wait=tell_place,
            )


def affinity_key_of(query: Query) -> str:
    """Return what keeps the query on one member under the `affinity` strategy: its user's
    conversation (two users may name theirs alike), else the user."""
    return f"{query.user_id}:{query.conversation_id}" if query.conversation_id else query.user_id


class QueryCancelled(Exception):
    """The client of a streamed query went away: the model call is stopped."""


# How often a streaming query looks whether its client went away (one Redis read).
CANCEL_CHECK_SECONDS = 0.2
CANCEL_TTL_SECONDS = 600


def cancel_key(query_id) -> str:
    return f"query.cancel.{query_id}"


async def cancel_query(query_id) -> None:
    """Ask the worker serving the query to stop its model call (its HTTP client left)."""
    await redis_client().set(cancel_key(query_id), 1, ex=CANCEL_TTL_SECONDS)


class CancelWatch:
    """Whether a query was cancelled, read from Redis at most every CANCEL_CHECK_SECONDS."""

    def __init__(self, query_id):
        self.key = cancel_key(query_id)
        self.checked = 0.0

    async def is_cancelled(self) -> bool:
        now = time.monotonic()
        if now - self.checked < CANCEL_CHECK_SECONDS:
            return False
        self.checked = now
        return bool(await redis_client().exists(self.key))


async def finish_cancelled(query: Query, partial: str, *, seconds: float) -> None:
    """End a cancelled query as answered with what was produced, billed for the time the
    model worked on it (the billing rule: base + service seconds x rate)."""
    answer = Answer(query, result=partial, result_type="text", worker="", processing_time=seconds)
    await write_through_outage(finishes, Finishing(answer))


async def finish_query(query: Query, served: Served, *, busy_seconds: float) -> None:
    """Store the answer and charge for it, count it, then push `query_result` (or the
    speech frames' own results); a query finished meanwhile (a rerun, the sysop) is left as
    it was and nothing is pushed. The words a spoken query was heard to say become its
    prompt, so it reads and is found like a typed one."""
    answer = Answer(
        query,
        result=served.answer.result,
        result_type=served.answer.result_type,
        worker=served.worker,
        processing_time=served.service_seconds,
        prompt=served.heard if isinstance(served, Spoken) else "",
        usage=served.answer.usage,
    )
    finished = await write_through_outage(
        finishes, Finishing(answer, busy_seconds=busy_seconds, is_cross_realm=served.is_cross_realm)
    )
    if finished is None:
        return
    await push_frame(finished.user_id, result_frame(finished))


def result_frame(query: Query) -> dict:
    """Return the frame of an answered query: `query_result`, or for the speech frames
    `transcription_result` (`text`) and `speech_result` (`audio`, base64 WAV);
    `processing_time` is the billed time, `usage` the token counts the model server reported
    (empty when it reported none) and `broker` the federation id of the broker whose
    worker answered. A speech query's result names the words its audio was heard to say
    (`heard`), so a page shows them beside the answer."""
    billed = {
        "query_id": str(query.id),
        "processing_time": query.processing_time,
        "cost": float(query.cost),
        "usage": query.usage,
        "worker": query.worker,
        "broker": broker_of_worker(query.worker) or settings.RENTAHAL_FEDERATION_ID,
    }
    if query.speech_task == Query.SpeechTask.TRANSCRIBE:
        return {"type": "transcription_result", "text": query.result, **billed}
    if query.speech_task == Query.SpeechTask.SPEAK:
        return {"type": "speech_result", "audio": query.result, **billed}
    heard = {"heard": query.prompt} if query.query_type == QueryType.SPEECH else {}
    return {"type": "query_result", "result": query.result, "result_type": query.result_type, **billed, **heard}


def final_frame(query: Query) -> dict:
    """Return the frame a finished query ended with: its result, or its failure's `error`."""
    return result_frame(query) if query.status == Query.Status.DONE else failure_frame(query)


def failure_frame(query: Query) -> dict:
    """Return the `error` frame that tells the user their query failed, and why."""
    return {"type": "error", "code": "query_failed", "message": f"Query failed: {query.error}", "query_id": str(query.id)}


async def fail_query(query_id: uuid.UUID | str, reason: str) -> Query | None:
    """Record the failure with a reason the user reads (nothing is charged), count it and
    push an `error` frame; return the query, or None if it was already finished.

    Callers outside the worker's event loop use `async_to_sync(fail_query)`: the write then
    runs on the caller's own thread and database connection.
    """
    failed = await write_through_outage(failures, Failure(query_id, reason))
    if failed is None:
        return None
    await push_frame(failed.user_id, failure_frame(failed))
    return failed


async def write_through_outage(coalescer: Coalescer, item):
    """Write `item` with `coalescer`, trying again while the database is unreachable.

    A model's answer must not be thrown away because Postgres restarted while it was being
    stored: a connection error (`DATABASE_OUTAGES`) is tried again after a
    pause that doubles each time, for up to `RENTAHAL_DB_RETRY_SECONDS`. The DB threads drop
    the broken connection, so the next try opens a new one. The writes are idempotent (a
    finished query is left as it is), so a write that committed before its connection broke
    is not done twice.
    """
    deadline = time.monotonic() + settings.RENTAHAL_DB_RETRY_SECONDS
    pause = FIRST_WRITE_RETRY_PAUSE
    while True:
        try:
            return await coalescer.submit(item)
        except DATABASE_OUTAGES as exc:
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("database unreachable (%s); writing again in %.2f s", exc, pause)
            await asyncio.sleep(pause)
            pause = min(2 * pause, LAST_WRITE_RETRY_PAUSE)


def fail_crashed_query(job, connection, exc_type, exc_value, traceback) -> None:
    """RQ failure callback: a job that crashed, timed out or lost its worker (RQ's
    AbandonedJobError) ends as a recorded failure, unless RQ runs it again.

    RQ calls this before it decides on a retry, with the job's retries not yet counted
    down, so a job with retries left is left for RQ to re-enqueue: `run_query` is safe to
    run again. A timeout is final: another run would wait as long again, so the job's
    retries are cleared before RQ reads them (RQ reads this same job object).
    """
    query_id = job.args[0]
    if issubclass(exc_type, WaitingForWorker):
        # Back at the end of the queue at once (RQ's retry), with its reruns as they were. Not
        # through the scheduler: a killed worker's scheduler lock would hold it for a minute,
        # and the run just spent RENTAHAL_BUSY_WAIT_SECONDS waiting, so it does not spin.
        job.retries_left = (job.retries_left or 0) + 1
        job.retry_intervals = None
        logger.info("query %s waits for a free worker: %s", query_id, exc_value)
        return
    if issubclass(exc_type, JobTimeoutException):
        job.retries_left = 0
    elif issubclass(exc_type, AbandonedJobError):
        # Its worker died: another runs it at once (the pause is for outages, and the
        # scheduler that would end it may have died with the worker).
        job.retry_intervals = None
    if job.should_retry:
        logger.warning("query %s job ended with %s; RQ runs it again (%d run(s) left)", query_id, exc_type.__name__, job.retries_left)
        return
    logger.error("query %s job crashed: %s: %s", query_id, exc_type.__name__, exc_value)
    if issubclass(exc_type, JobTimeoutException):
        reason = f"no answer within {job.timeout} seconds"
    elif issubclass(exc_type, AbandonedJobError):
        reason = f"its worker stopped while serving it, on each of {MAX_ATTEMPTS} runs"
    else:
        reason = f"internal error ({exc_type.__name__})"
    async_to_sync(fail_query)(query_id, reason)


def terminate_queries(guid: str, *, acting_user) -> int:
    """Fail every unfinished query of the user and stop their jobs, then tell the user's
    sockets `query_terminated`; return how many ended.

    The actor is a sysop (the socket's frame) or a staff login (the admin's action, behind
    its own permission check); a broker user who is not sysop is refused."""
    if isinstance(acting_user, User) and not acting_user.is_sysop:
        raise Forbidden("Only a sysop may terminate queries.")
    target = find_user(guid)
    ended = []
    for query in queries.unfinished_queries(target.guid):
        # The row is failed first, so a job that still returns is discarded by `finish_query`.
        if async_to_sync(fail_query)(query.id, "terminated by the sysop") is not None:
            ended.append(str(query.id))
        stop_job(str(query.id))
    async_to_sync(push_frame)(target.guid, {"type": "query_terminated", "guid": target.guid, "query_ids": ended})
    return len(ended)


def stop_job(job_id: str) -> None:
    """Cancel a job still waiting in its queue, or have its worker stop running it.

    A running job is stopped through RQ's `stop-job` command: the realm worker cancels its
    model call (`rentahal.worker.ConcurrentWorker.request_stop_execution`), which frees the
    model server's slot, and records the job as stopped.
    """
    connection = get_queue("default").connection
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return
    status = job.get_status(refresh=False)
    try:
        if status == "started":
            send_stop_job_command(connection, job_id)
        elif status in ("queued", "scheduled", "deferred"):
            job.cancel()
    except InvalidJobOperation:
        logger.info("job %s was neither queued nor running when it was stopped", job_id)
