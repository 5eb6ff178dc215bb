"""The concurrent RQ worker: many model-call jobs in flight on one event loop per process.

A stock RQ worker runs one job at a time, and model calls wait on the network for seconds
to minutes. `ConcurrentWorker` keeps up to `concurrency` coroutine jobs running on one
long-lived event loop and leaves every piece of bookkeeping to RQ's own methods, so its
jobs show up in the started, finished and failed registries, retries and `on_failure`
callbacks work, and rq / django-rq tooling sees an ordinary worker.

Its Redis round trips are paid per batch, not per job: the jobs waiting for free slots are
popped, fetched and started together, and the successes of the jobs that finish together are
recorded in one transaction, so a busy loop is not held up by one round trip after another.
"""
import asyncio
import dataclasses
import inspect
import logging
import signal
from typing import Any

import aiohttp
import redis
from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from rq import Worker
from rq.exceptions import DequeueTimeout
from rq.executions import Execution
from rq.job import Job, JobStatus, Retry
from rq.queue import Queue
from rq.rate_limit import release_slot
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus

from pools.dispatch import shared_session
from rentahal.db_threads import DatabaseThreads

logger = logging.getLogger(__name__)

# Seconds a blocking dequeue waits before looking at the stop flag again.
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


class JobStoppedOnRequest(Exception):
    """The job was stopped through RQ's `stop-job` command."""


@dataclasses.dataclass
class Finished:
    """A job that returned, waiting with others for its success to be recorded."""

    job: Job
    queue: Queue
    execution: Execution
    return_value: Any
    recorded: asyncio.Future


class ConcurrentWorker(Worker):
    """An RQ worker that runs up to `concurrency` coroutine jobs at once in this process.

    Each job's coroutine runs on the worker's event loop under `asyncio.timeout(job.timeout)`;
    a job that overruns fails alone, with `JobTimeoutException`, through RQ's normal failure
    handling. Synchronous jobs run in a small thread pool. On SIGTERM or SIGINT the worker
    stops dequeuing, lets jobs in flight finish for `shutdown_grace` seconds, then puts the
    rest back at the front of their queues; a second signal puts them back at once.
    """

    # Signal-based timeouts only work in the main thread; failure callbacks run in a thread.
    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args, concurrency: int = 64, shutdown_grace: float = 20.0, db_threads: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        self.concurrency = concurrency
        # Jobs' thread-sensitive sync_to_async calls (the ORM) are spread over a few
        # one-thread lanes: the Postgres connections of a process stay bounded at
        # `db_threads`, and one slow transaction holds up only its own lane.
        self._db_lanes = [
            DatabaseThreads(max_workers=1, thread_name_prefix=f"rq-db-{n}")
            for n in range(max(1, db_threads))
        ]
        self._jobs_started = 0
        self.shutdown_grace = shutdown_grace
        self.in_flight: dict[str, tuple[asyncio.Task, Job, Execution]] = {}
        self.completed_jobs = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._requeue_now: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._requeued: set[str] = set()
        self._stopped_executions: set[str] = set()
        # Jobs that returned and wait for their success to be recorded, the task recording
        # them, and their executions (which heartbeats must no longer touch).
        self._finished: list[Finished] = []
        self._recorder: asyncio.Task | None = None
        self._finishing: set[str] = set()
        self._pop_jobs = self.connection.register_script(POP_JOBS)
        # Callbacks and synchronous jobs touch the ORM and may call async_to_sync, neither
        # of which may happen on the loop's thread.
        self._threads = DatabaseThreads(max_workers=4, thread_name_prefix="rq-sync")

    # -- the work loop -----------------------------------------------------------------

    def work(self, burst: bool = False, logging_level: str | None = None, with_scheduler: bool = False,
             max_jobs: int | None = None, **kwargs) -> bool:
        """Run jobs until stopped (or, with `burst`, until the queues are empty)."""
        self.bootstrap(logging_level or "INFO")
        if with_scheduler:
            self._start_scheduler(burst, logging_level or "INFO")
        try:
            asyncio.run(self.work_async(burst=burst, max_jobs=max_jobs))
        finally:
            self._threads.shutdown(wait=True)
            for lane in self._db_lanes:
                lane.shutdown(wait=True)
            self.teardown()
        return bool(self.completed_jobs)

    async def work_async(self, *, burst: bool = False, max_jobs: int | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._requeue_now = asyncio.Event()
        self._wake = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(signum, self.request_stop_async, signum)
        # One session for every model call of this process: connections are kept alive and
        # reused. The connector's own cap would otherwise hold calls at 100 per process.
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            token = shared_session.set(session)
            heartbeats = asyncio.create_task(self.maintain_heartbeats_async())
            try:
                await self.dequeue_until_stopped(burst=burst, max_jobs=max_jobs)
                await self.drain()
            finally:
                heartbeats.cancel()
                shared_session.reset(token)
        self.set_state(WorkerStatus.IDLE)

    async def dequeue_until_stopped(self, *, burst: bool, max_jobs: int | None) -> None:
        started = 0
        # Whether the queues are likely to hold more jobs than the last pop took: then the
        # next pop does not wait, else it waits on the queues (which answer at once anyway
        # when a job is there).
        is_backlogged = True
        while not self._stopping.is_set():
            if max_jobs is not None and started >= max_jobs:
                break
            free = self.concurrency - len(self.in_flight)
            if free <= 0:
                # Woken when a job ends or a stop is requested.
                self._wake.clear()
                await self._wake.wait()
                continue
            if max_jobs is not None:
                free = min(free, max_jobs - started)
            jobs = await asyncio.to_thread(self.take_jobs, free, wait=not (burst or is_backlogged))
            is_backlogged = len(jobs) >= free
            if not jobs:
                if not burst:
                    continue
                if not self.in_flight:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            started += len(jobs)
            self.start_jobs(jobs)

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
            return self._dequeue_one(DEQUEUE_BLOCK_SECONDS)
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

    def _dequeue_one(self, timeout: int) -> list[tuple[Job, Queue]]:
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

    def start_jobs(self, jobs: list[tuple[Job, Queue, Execution]]) -> None:
        for job, queue, execution in jobs:
            task = asyncio.create_task(self.run_job(job, queue, execution), name=f"rq-job-{job.id}")
            self.in_flight[execution.id] = (task, job, execution)
            task.add_done_callback(self._job_done(execution.id))

    def _job_done(self, execution_id: str):
        def done(_task):
            self.in_flight.pop(execution_id, None)
            self._wake.set()

        return done

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

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        if job.timeout is None or job.timeout <= 0:
            return self.job_monitoring_interval + 60
        return super().get_heartbeat_ttl(job, working_time)

    async def run_job(self, job: Job, queue: Queue, execution: Execution) -> None:
        timeout = job.timeout if job.timeout is not None else self.queue_class.DEFAULT_TIMEOUT
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None) as deadline:
                return_value = await self.perform_async(job)
        except asyncio.CancelledError:
            if execution.id in self._stopped_executions:
                self._stopped_executions.discard(execution.id)
                self._stopped_job_id = job.id
                await self.finalize_failure(job, queue, execution, exc_info_of(JobStoppedOnRequest("stopped")))
                return
            self.requeue_job(job, queue, execution)
            raise
        except BaseException as exc:  # noqa: BLE001 - every job error ends in RQ's failure handling
            if isinstance(exc, TimeoutError) and deadline.expired():
                exc = JobTimeoutException(f"Task exceeded maximum timeout value ({timeout} seconds)")
            await self.finalize_failure(job, queue, execution, exc_info_of(exc))
            return
        job.ended_at = now()
        try:
            if job.success_callback is None and not isinstance(return_value, Retry) and not job.repeats_left:
                await self.record_success(job, queue, execution, return_value)
            else:
                await self.in_thread(self._finalize_success, job, queue, execution, return_value)
        except Exception:
            self.log.exception("Worker %s: could not record the success of job %s", self.name, job.id)
        self.completed_jobs += 1

    # -- recording successes in batches ------------------------------------------------

    async def record_success(self, job: Job, queue: Queue, execution: Execution, return_value: Any) -> None:
        """Record the job's success together with every other job that finished meanwhile.

        Returns once it is recorded, so a job's task (which shutdown waits for) outlives its
        bookkeeping. One recording runs at a time, in a thread: the jobs that finish while it
        runs make up the next batch, so the batches grow with the load.
        """
        recorded = self._loop.create_future()
        self._finishing.add(execution.id)
        self._finished.append(Finished(job, queue, execution, return_value, recorded))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self.record_finished())
        try:
            await asyncio.shield(recorded)
        finally:
            self._finishing.discard(execution.id)

    async def record_finished(self) -> None:
        while self._finished:
            # One turn of the loop lets the other jobs finishing now join this batch.
            await asyncio.sleep(0)
            batch, self._finished = self._finished, []
            try:
                await self.in_thread(self.record_successes, batch)
            except Exception as exc:
                for finished in batch:
                    finished.recorded.set_exception(exc)
            else:
                for finished in batch:
                    finished.recorded.set_result(None)

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
                    self._finalize_success(finished.job, finished.queue, finished.execution, finished.return_value)
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

    async def perform_async(self, job: Job):
        lane = self._db_lanes[self._jobs_started % len(self._db_lanes)]
        self._jobs_started += 1
        async with ThreadSensitiveContext(executor=lane):
            return await self._perform(job)

    async def _perform(self, job: Job):
        function = job.func
        if inspect.iscoroutinefunction(function):
            return await function(*job.args, **job.kwargs)
        result = await self.in_thread(job.perform)
        if inspect.isawaitable(result):
            return await result
        return result

    async def finalize_failure(self, job: Job, queue: Queue, execution: Execution, exc_info) -> None:
        try:
            await self.in_thread(self._finalize_failure, job, queue, execution, exc_info)
        except Exception:
            self.log.exception("Worker %s: could not record the failure of job %s", self.name, job.id)
        self.completed_jobs += 1

    async def in_thread(self, function, *args):
        return await SyncToAsync(function, thread_sensitive=False, executor=self._threads)(*args)

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
        self._requeued.add(job.id)
        self.log.info("Worker %s: job %s put back on %s for another worker", self.name, job.id, queue.name)

    # -- heartbeats --------------------------------------------------------------------

    async def maintain_heartbeats_async(self) -> None:
        """Keep the worker, its executions and their jobs alive in RQ's registries."""
        interval = max(1, min(self.job_monitoring_interval, self.worker_ttl // 3))
        while True:
            await asyncio.sleep(interval)
            try:
                self.heartbeat_in_flight()
                if self.should_run_maintenance_tasks:
                    await asyncio.to_thread(self.run_maintenance_tasks)
            except Exception:
                self.log.exception("Worker %s: heartbeat failed", self.name)

    def heartbeat_in_flight(self) -> None:
        worker_ttl = max(self.worker_ttl, self.job_monitoring_interval) + 60
        right_now = now()
        with self.connection.pipeline() as pipeline:
            self.heartbeat(worker_ttl, pipeline=pipeline)
            for _task, job, execution in list(self.in_flight.values()):
                if execution.id in self._finishing:
                    continue
                working_time = (right_now - job.started_at).total_seconds() if job.started_at else 0.0
                ttl = self.get_heartbeat_ttl(job, working_time=working_time)
                execution.heartbeat(job.started_job_registry, ttl, pipeline=pipeline)
                job.heartbeat(right_now, ttl, pipeline=pipeline, xx=True)
            pipeline.execute()

    # -- stopping ----------------------------------------------------------------------

    def request_stop_async(self, signum) -> None:
        if self._stopping.is_set():
            self.log.warning("Worker %s: second stop signal, putting jobs in flight back now", self.name)
            self._requeue_now.set()
            return
        self.log.info(
            "Worker %s: warm shutdown on %s: %d job(s) in flight get %.0f s to finish",
            self.name, signal.Signals(signum).name, len(self.in_flight), self.shutdown_grace,
        )
        self._shutdown_requested_date = now()
        self.set_shutdown_requested_date()
        self._stopping.set()
        self._wake.set()

    async def drain(self) -> None:
        """Wait for jobs in flight up to the grace period, then requeue what is left."""
        tasks = [task for task, _job, _execution in self.in_flight.values()]
        if not tasks:
            return
        if self._stopping.is_set():
            requeue_now = asyncio.ensure_future(self._requeue_now.wait())
            await asyncio.wait([*tasks, requeue_now], timeout=self.shutdown_grace)
            requeue_now.cancel()
        else:
            await asyncio.wait(tasks)
        leftover = [task for task, _job, _execution in self.in_flight.values()]
        for task in leftover:
            task.cancel()
        if leftover:
            for outcome in await asyncio.gather(*leftover, return_exceptions=True):
                if not isinstance(outcome, (asyncio.CancelledError, type(None))):
                    self.log.error("Worker %s: a job cut short at shutdown ended with %r", self.name, outcome)
            self.log.info("Worker %s: %d job(s) put back on their queues", self.name, len(leftover))

    def request_stop_execution(self, execution_id: str) -> None:
        """RQ's `stop-job` command (from the pubsub thread): cancel that job alone."""
        entry = self.in_flight.get(execution_id)
        if entry is None or self._loop is None:
            self.log.warning("Not running execution %s, command ignored.", execution_id)
            return
        self._stopped_executions.add(execution_id)
        self._loop.call_soon_threadsafe(entry[0].cancel)

    def request_stop(self, signum, frame):
        """RQ's `shutdown` command sends SIGINT; the loop's handler takes it from there."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self.request_stop_async, signum)
        else:
            super().request_stop(signum, frame)


def exc_info_of(exc: BaseException):
    return type(exc), exc, exc.__traceback__

