"""Every place rentahal reaches into RQ's internals, fenced in one module, for rq==3.0.0.

`ConcurrentWorker` (rentahal/worker.py) runs many jobs on one event loop; RQ's Worker runs one
at a time and does its bookkeeping per job. `BatchedBookkeeping` gives the concurrent worker
that bookkeeping a batch at a time; this is the only module of the project that uses RQ's
private names or repeats RQ's logic. It stays because RQ's own per-job path, measured in its
place, cost more CPU per query (bench/README.md, "RQ's own per-job bookkeeping vs the batched
mirror"). `rentahal.checks.check_rq_version` refuses any other rq: after
an upgrade, compare each item below with the new source before raising MIRRORED_RQ_VERSION.

Logic repeated from rq 3.0.0 (rq/queue.py, rq/worker/base.py, rq/executions.py):
- `Queue.dequeue_any` (its `Queue.lpop` / `Queue.lmove` and `Queue._fetch_dequeued_job`):
  `dequeue_ready` and `dequeue_waiting` pop many ids at once (the POP_JOBS script, BLMPOP)
  and `fetch_jobs` reads their hashes in one pipeline, skipping a job whose hash is gone.
- `rq.executions.prepare_execution` and `BaseWorker.prepare_job_execution`:
  `begin_executions`, for a batch in one pipeline.
- `BaseWorker._finalize_success` and `BaseWorker.handle_job_success` for a job without
  success callback, `Retry` result, repeats or dependents: `record_successes` and
  `stage_success`, for a batch in one MULTI/EXEC.
- `Queue.enqueue_job` after its dependency check: `requeue_job` puts a job back at the front.
- `rq.command.handle_stop_job_command`: `handle_payload` stops the execution running the job,
  whichever of the jobs in flight it is (RQ's compares it with one execution, then kills the
  work horse, which this worker does not have).

Private names used, all here: `BaseWorker._ordered_queues`, `_start_scheduler`,
`_finalize_success`, `_finalize_failure`, `_stopped_job_id`, `_shutdown_requested_date`;
`Job._result`, `Job._status`, `Job._handle_success`; `Queue._enqueue_job`.
"""
import asyncio
import dataclasses
from typing import Any

import redis
from rq.command import parse_payload
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.rate_limit import release_slot
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus

MIRRORED_RQ_VERSION = "3.0.0"

# Seconds a blocking dequeue waits before the worker looks at its stop and suspension flags.
DEQUEUE_BLOCK_SECONDS = 1
# Most job ids popped in one call: the pop script hands them to RPUSH as arguments, and Lua
# caps how many values one call can unpack (about 8,000).
MAX_POP = 1000

# Pop up to ARGV[1] job ids from the first non-empty queue of KEYS, in the worker's queue
# order, as RQ's LPOP loop would one at a time. With ARGV[2] == '1' (a worker of one queue)
# the ids are also pushed onto the last key, the queue's intermediate queue, as RQ's LMOVE
# does, so a worker that dies before starting them leaves them for RQ's cleanup to recover.
# Returns the queue's key followed by the ids, or an empty list.
POP_JOBS = """
local queues = #KEYS
if ARGV[2] == '1' then queues = queues - 1 end
for i = 1, queues do
  local ids = redis.call('LPOP', KEYS[i], ARGV[1])
  if ids then
    if ARGV[2] == '1' then redis.call('RPUSH', KEYS[#KEYS], unpack(ids)) end
    table.insert(ids, 1, KEYS[i])
    return ids
  end
end
return {}
"""


@dataclasses.dataclass
class Finished:
    """A job that returned, waiting with others for its success to be recorded."""

    job: Job
    queue: Queue
    execution: Execution
    return_value: Any
    recorded: asyncio.Future


class BatchedBookkeeping(BaseWorker):
    """RQ's BaseWorker, with its per-job Redis bookkeeping also available for batches of jobs.

    It derives from RQ's BaseWorker, as RQ's SimpleWorker does: jobs run in this process, and
    `rq.Worker`'s work-horse handling (`kill_horse` signals the process group of the horse's
    pid, 0 here, so this worker's own group) must never be reached.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pop_jobs = self.connection.register_script(POP_JOBS)

    def start_scheduler(self, burst: bool, logging_level: str) -> None:
        self._start_scheduler(burst, logging_level)

    def handle_payload(self, message) -> None:
        """Take RQ's worker commands; `stop-job` stops that job's execution (see the header)."""
        payload = parse_payload(message)
        if payload.get("command") != "stop-job":
            super().handle_payload(message)
            return
        executions = [execution for execution in list(self.executions.values()) if execution.job_id == payload.get("job_id")]
        if not executions:
            self.log.warning("Worker %s: not running job %s, command ignored", self.name, payload.get("job_id"))
        for execution in executions:
            self.request_stop_execution(execution.id)

    def note_shutdown_requested(self) -> None:
        """Record the warm shutdown's date where RQ's own `request_stop` does."""
        self._shutdown_requested_date = now()
        self.set_shutdown_requested_date()

    # -- taking jobs -------------------------------------------------------------------

    def take_jobs(self, limit: int, *, wait: bool) -> list[tuple[Job, Queue, Execution]]:
        """Dequeue up to `limit` jobs and start their executions (in a thread, off the loop).

        With `wait`, wait up to DEQUEUE_BLOCK_SECONDS for a job to come. A batch costs three
        round trips however many jobs it holds: the pop, the jobs' hashes, their start.
        """
        jobs = self.dequeue_waiting(limit) if wait else self.dequeue_ready(limit)
        if not jobs:
            return []
        return [(job, queue, execution) for (job, queue), execution in zip(jobs, self.begin_executions(jobs))]

    def dequeue_ready(self, limit: int) -> list[tuple[Job, Queue]]:
        """Pop up to `limit` waiting jobs and fetch them: two round trips however many come.

        They come from the first non-empty queue in the worker's order, as a run of RQ's
        `dequeue_any` would return them.
        """
        queues = self._ordered_queues
        keys = [queue.key for queue in queues]
        is_single = len(queues) == 1
        if is_single:
            keys.append(queues[0].intermediate_queue_key)
        popped = self._pop_jobs(keys=keys, args=[min(limit, MAX_POP), 1 if is_single else 0], client=self.connection)
        if not popped:
            return []
        queue_key, *job_ids = popped
        return self.fetch_jobs(queue_key, job_ids)

    def dequeue_waiting(self, limit: int) -> list[tuple[Job, Queue]]:
        """Wait up to DEQUEUE_BLOCK_SECONDS for jobs on any queue, then take up to `limit` of
        them from the first queue that has some.

        A worker of one queue waits with RQ's own `dequeue_any` (BLMOVE, one job, kept in the
        intermediate queue until started); one of several queues with BLMPOP, RQ's BLPOP
        taking a batch.
        """
        if len(self._ordered_queues) == 1:
            return self.dequeue_one(DEQUEUE_BLOCK_SECONDS)
        keys = [queue.key for queue in self._ordered_queues]
        popped = self.connection.blmpop(
            DEQUEUE_BLOCK_SECONDS, len(keys), *keys, direction="LEFT", count=min(limit, MAX_POP)
        )
        if not popped:
            return []
        queue_key, job_ids = popped
        return self.fetch_jobs(queue_key, job_ids)

    def fetch_jobs(self, queue_key: bytes, job_ids: list[bytes]) -> list[tuple[Job, Queue]]:
        """Return the popped jobs of the queue, their hashes read in one round trip.

        A job whose hash is gone is skipped, as RQ skips it; one whose hash cannot be read is
        logged and skipped, so the jobs popped with it still run.
        """
        queue = next(queue for queue in self._ordered_queues if queue.key == queue_key.decode())
        ids = [job_id.decode() for job_id in job_ids]
        with self.connection.pipeline(transaction=False) as pipeline:
            for job_id in ids:
                pipeline.hgetall(self.job_class.key_for(job_id))
            hashes = pipeline.execute()
        jobs = []
        for job_id, raw in zip(ids, hashes):
            if not raw:
                continue
            job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
            try:
                job.restore(raw)
            except Exception:
                self.log.exception("Worker %s: could not read job %s from %s, skipped", self.name, job_id, queue.name)
                continue
            jobs.append((job, queue))
        self.log.debug("Worker %s: dequeued %d job(s) from %s", self.name, len(jobs), queue.name)
        return jobs

    def dequeue_one(self, timeout: int) -> list[tuple[Job, Queue]]:
        try:
            result = self.queue_class.dequeue_any(
                self._ordered_queues,
                timeout,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except DequeueTimeout:
            return []
        if result is None:
            return []
        self.log.debug("Worker %s: dequeued job %s from %s", self.name, result[0].id, result[1].name)
        return [result]

    def begin_executions(self, jobs: list[tuple[Job, Queue]]) -> list[Execution]:
        """Register the jobs' executions and mark them started, in one Redis round trip.

        This is RQ's `prepare_execution` and `prepare_job_execution` for every job, folded into
        one pipeline, with the worker's state and heartbeat written once for all of them.
        """
        executions = []
        with self.connection.pipeline() as pipeline:
            ttls = [self.get_heartbeat_ttl(job) for job, _queue in jobs]
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            self.heartbeat(max(ttls), pipeline=pipeline)
            for (job, queue), ttl in zip(jobs, ttls):
                execution = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
                self.executions[execution.id] = execution
                job.heartbeat(now(), ttl, pipeline=pipeline)
                job.prepare_for_execution(self.name, pipeline=pipeline)
                pipeline.persist(job.key)
                if len(self.queues) == 1:
                    pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
                executions.append(execution)
            pipeline.execute()
        return executions

    # -- recording outcomes ------------------------------------------------------------

    @staticmethod
    def is_batchable(job: Job, return_value: Any) -> bool:
        """Whether the job's success is only writes (`record_successes` can take it).

        A success callback, a `Retry` result or a repeat needs RQ's own path.
        """
        return job.success_callback is None and not isinstance(return_value, Retry) and not job.repeats_left

    def record_success_alone(self, job: Job, queue: Queue, execution: Execution, return_value: Any) -> None:
        """RQ's own success path for one job: callbacks, retries, repeats, dependents."""
        self._finalize_success(job, queue, execution, return_value)

    def record_failure(self, job: Job, queue: Queue, execution: Execution, exc_info) -> None:
        """RQ's own failure path: failure callback, retries, the failed registry."""
        self._finalize_failure(job, queue, execution, exc_info)

    def record_stopped(self, job: Job, queue: Queue, execution: Execution, exc_info) -> None:
        """Record a job cut short by RQ's `stop-job` command as RQ does: STOPPED, not FAILED."""
        self._stopped_job_id = job.id
        self.record_failure(job, queue, execution, exc_info)

    def record_successes(self, batch: list[Finished]) -> None:
        """Record the successes of a batch of jobs: three Redis round trips for the whole batch.

        This is RQ's `handle_job_success` for every job in one MULTI/EXEC. As RQ does, it
        WATCHes the jobs' dependents keys and reads them; the batch is committed only if
        none of them has a dependent and none was added before the commit. Otherwise each
        job takes RQ's own path alone, which moves its dependents to their queues; so does
        every job of a batch one of whose jobs cannot be staged (a result that does not
        pickle), so that one fails alone.
        """
        dependents_keys = [finished.job.dependents_key for finished in batch]
        with self.connection.pipeline() as pipeline:
            pipeline.watch(*dependents_keys)
            is_batched = not pipeline.sunion(dependents_keys)
            if is_batched:
                pipeline.multi()
                try:
                    for finished in batch:
                        self.stage_success(finished, pipeline)
                except Exception:
                    is_batched = False
            if is_batched:
                try:
                    pipeline.execute()
                except redis.WatchError:
                    is_batched = False
        if not is_batched:
            for finished in batch:
                try:
                    self.record_success_alone(finished.job, finished.queue, finished.execution, finished.return_value)
                except Exception:
                    self.log.exception("Worker %s: could not record the success of job %s", self.name, finished.job.id)
            return
        for finished in batch:
            job = finished.job
            release_slot(job)
            job.send_webhooks(JobStatus.FINISHED)
            self.log.info("Worker %s: %s: Job OK (%s) in %ss", self.name, job.origin, job.id, job.ended_at - job.started_at)

    def stage_success(self, finished: Finished, pipeline: redis.client.Pipeline) -> None:
        """Queue the writes of RQ's `handle_job_success` for one job without dependents."""
        job, execution = finished.job, finished.execution
        job._result = finished.return_value
        job._status = JobStatus.FINISHED
        # RQ writes this heartbeat on its own to cover a success callback; these jobs have
        # none, and the job's hash is saved below with it.
        job.last_heartbeat = job.ended_at
        self.increment_successful_job_count(pipeline=pipeline)
        self.increment_total_working_time(job.ended_at - job.started_at, pipeline)
        result_ttl = job.get_result_ttl(self.default_result_ttl)
        if result_ttl != 0:
            job._handle_success(
                result_ttl,
                pipeline=pipeline,
                worker_name=self.name,
                execution_id=execution.id,
                execution_started_at=execution.created_at,
                execution_ended_at=job.ended_at,
            )
        job.cleanup(result_ttl, pipeline=pipeline, remove_from_queue=False)
        self.cleanup_execution(job, pipeline=pipeline, execution=execution)

    def requeue_job(self, job: Job, queue: Queue, execution: Execution) -> None:
        """Put a job that was cut short by shutdown back at the front of its queue.

        The job function must tolerate a rerun (`run_query` does: a finished query is left
        alone and never charged twice).
        """
        # One MULTI/EXEC, so the job is never in both the started registry and its queue,
        # nor in neither. (`enqueue_job` would WATCH for dependencies inside the pipeline;
        # these jobs have none, so the step after that check is called directly.)
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            queue._enqueue_job(job, pipeline=pipeline, at_front=True)
            pipeline.execute()
        self.log.info("Worker %s: job %s put back on %s for another worker", self.name, job.id, queue.name)
