"""The concurrent RQ worker: many model-call jobs in flight on one event loop per process.

A stock RQ worker runs one job at a time, and model calls wait on the network for seconds
to minutes. `ConcurrentWorker` keeps up to `concurrency` coroutine jobs running on one
long-lived event loop and leaves every piece of bookkeeping to RQ's own methods, so its
jobs show up in the started, finished and failed registries, retries and `on_failure`
callbacks work, and rq / django-rq tooling sees an ordinary worker.
"""
import asyncio
import concurrent.futures
import inspect
import logging
import signal

import aiohttp
from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from rq import Worker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now
from rq.worker import WorkerStatus

from pools.dispatch import shared_session

logger = logging.getLogger(__name__)

# Seconds a blocking dequeue waits before looking at the stop flag again.
DEQUEUE_BLOCK_SECONDS = 1


class JobStoppedOnRequest(Exception):
    """The job was stopped through RQ's `stop-job` command."""


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
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rq-db-{n}")
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
        # Callbacks and synchronous jobs touch the ORM and may call async_to_sync, neither
        # of which may happen on the loop's thread.
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="rq-sync")

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
        while not self._stopping.is_set():
            if max_jobs is not None and started >= max_jobs:
                break
            if len(self.in_flight) >= self.concurrency:
                # Woken when a job ends or a stop is requested.
                self._wake.clear()
                await self._wake.wait()
                continue
            result = await self.dequeue_async(burst=burst)
            if result is None:
                if not burst:
                    continue
                if not self.in_flight:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            job, queue = result
            started += 1
            self.start_job(job, queue)

    async def dequeue_async(self, *, burst: bool) -> tuple[Job, Queue] | None:
        """Return the next job, or None when none came within DEQUEUE_BLOCK_SECONDS."""
        # A non-blocking pop first: under load it answers at once, without a thread hop.
        result = self._dequeue(None)
        if result is not None or burst:
            return result
        return await asyncio.to_thread(self._dequeue, DEQUEUE_BLOCK_SECONDS)

    def _dequeue(self, timeout: int | None) -> tuple[Job, Queue] | None:
        try:
            result = self.queue_class.dequeue_any(
                self._ordered_queues,
                timeout,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except Exception as exc:
            if type(exc).__name__ != "DequeueTimeout":
                raise
            return None
        if result is not None:
            self.log.debug("Worker %s: dequeued job %s from %s", self.name, result[0].id, result[1].name)
        return result

    def start_job(self, job: Job, queue: Queue) -> None:
        execution = self.begin_execution(job, queue)
        task = asyncio.create_task(self.run_job(job, queue, execution), name=f"rq-job-{job.id}")
        self.in_flight[execution.id] = (task, job, execution)

        def done(_task):
            self.in_flight.pop(execution.id, None)
            self._wake.set()

        task.add_done_callback(done)

    def begin_execution(self, job: Job, queue: Queue) -> Execution:
        """Register the execution and mark the job started, in one Redis round trip.

        This is RQ's `prepare_execution` and `prepare_job_execution` folded into one pipeline.
        """
        with self.connection.pipeline() as pipeline:
            ttl = self.get_heartbeat_ttl(job)
            execution = Execution.create(job, ttl, pipeline=pipeline, worker_name=self.name)
            self.executions[execution.id] = execution
            self.set_state(WorkerStatus.BUSY, pipeline=pipeline)
            self.heartbeat(ttl, pipeline=pipeline)
            job.heartbeat(now(), ttl, pipeline=pipeline)
            job.prepare_for_execution(self.name, pipeline=pipeline)
            pipeline.persist(job.key)
            if len(self.queues) == 1:
                pipeline.lrem(queue.intermediate_queue_key, 1, job.id)
            pipeline.execute()
        return execution

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
        try:
            if job.success_callback is None:
                self._finalize_success(job, queue, execution, return_value)
            else:
                await self.in_thread(self._finalize_success, job, queue, execution, return_value)
        except Exception:
            self.log.exception("Worker %s: could not record the success of job %s", self.name, job.id)
        self.completed_jobs += 1

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

