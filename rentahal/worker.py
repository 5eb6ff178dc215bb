"""The concurrent RQ worker: many model-call jobs in flight on one event loop per process.

A stock RQ worker runs one job at a time, and model calls wait on the network for seconds
to minutes. `ConcurrentWorker` keeps up to `concurrency` coroutine jobs running on one
long-lived event loop and leaves the bookkeeping to RQ's methods or to their batched
mirror in rentahal/rq_mirror.py, so its jobs show up in the started, finished and failed
registries, retries and `on_failure` callbacks work, `rq suspend` pauses it, and rq /
django-rq tooling sees an ordinary worker.

Its Redis round trips are paid per batch, not per job: the jobs waiting for free slots are
popped, fetched and started together, and the successes of the jobs that finish together are
recorded in one transaction, so a busy loop is not held up by one round trip after another.
This module uses only RQ's public names; everything else is in rentahal/rq_mirror.py.
"""
import asyncio
import inspect
import logging
import signal
from typing import Any

from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from django.conf import settings
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.suspension import is_suspended
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from rentahal.db_threads import DatabaseThreads
from rentahal.errors import REDIS_OUTAGES
from rentahal.http_session import process_session
from rentahal.queues import JobDeferred
from rentahal.rq_mirror import BatchedBookkeeping, Finished

logger = logging.getLogger(__name__)

# Seconds between looks at RQ's suspension flag, as RQ's own `check_for_suspension` sleeps.
SUSPENSION_POLL_SECONDS = 1.0
# Pauses between dequeues while Redis is unreachable: the first, doubling up to the last.
FIRST_OUTAGE_PAUSE = 0.5
LAST_OUTAGE_PAUSE = 8.0


class JobStoppedOnRequest(Exception):
    """The job was stopped through RQ's `stop-job` or `stop-execution` command."""


class QuietDeferrals:
    """Worker mixin: RQ logs every exception a job raises as an ERROR with its traceback
    and hands it to the exception handlers (an error tracker). A deferral is neither: under
    a busy pool it happens for every query that waits, and would bury the real crashes. It
    is logged at DEBUG; the job's failure callback says why it waits."""

    def handle_exception(self, job: Job, *exc_info) -> None:
        if isinstance(exc_info[1], JobDeferred):
            self.log.debug("Worker %s: job %s deferred: %s", self.name, job.id, exc_info[1])
            return
        super().handle_exception(job, *exc_info)


class RealmSimpleWorker(QuietDeferrals, SimpleWorker):
    """RQ's stock SimpleWorker (one job at a time, in this process), quiet about deferrals."""


class ConcurrentWorker(QuietDeferrals, BatchedBookkeeping):
    """An RQ worker that runs up to `concurrency` coroutine jobs at once in this process.

    Each job's coroutine runs on the worker's event loop under `asyncio.timeout(job.timeout)`;
    a job that overruns fails alone, with `JobTimeoutException`, through RQ's normal failure
    handling. Synchronous jobs run in a small thread pool. On SIGTERM or SIGINT the worker
    stops dequeuing, lets jobs in flight finish for `shutdown_grace` seconds, then puts the
    rest back at the front of their queues; a second signal puts them back at once. While
    `rq suspend` holds, it takes no new jobs and lets those in flight finish.
    """

    # Signal-based timeouts only work in the main thread; failure callbacks run in a thread.
    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args, concurrency: int = 1024, shutdown_grace: float = 20.0, db_threads: int = 4, **kwargs):
        # RQ's 30 s interval, plus its 60 s of grace, let a killed worker's jobs wait ~100 s
        # before anyone saw they were abandoned; see `get_heartbeat_ttl`.
        kwargs.setdefault("job_monitoring_interval", settings.RENTAHAL_WORKER_HEARTBEAT)
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
        # The current pause between dequeues in a Redis outage (0: Redis answers).
        self._outage_pause = 0.0
        self.shutdown_grace = shutdown_grace
        self.in_flight: dict[str, tuple[asyncio.Task, Job, Execution]] = {}
        self.completed_jobs = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._requeue_now: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        # Set while `rq suspend` does not hold.
        self._resumed: asyncio.Event | None = None
        self._stopped_executions: set[str] = set()
        # Jobs that returned and wait for their success to be recorded, the task recording
        # them, and their executions (which heartbeats must no longer touch).
        self._finished: list[Finished] = []
        self._recorder: asyncio.Task | None = None
        self._finishing: set[str] = set()
        # Callbacks and synchronous jobs touch the ORM and may call async_to_sync, neither
        # of which may happen on the loop's thread.
        self._threads = DatabaseThreads(max_workers=4, thread_name_prefix="rq-sync")

    # -- the work loop -----------------------------------------------------------------

    def work(self, burst: bool = False, logging_level: str | None = None, with_scheduler: bool = False,
             max_jobs: int | None = None, **kwargs) -> bool:
        """Run jobs until stopped (or, with `burst`, until the queues are empty)."""
        self.bootstrap(logging_level or "INFO")
        if with_scheduler:
            self.start_scheduler(burst, logging_level or "INFO")
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
        self._resumed = asyncio.Event()
        await self.look_for_suspension()
        # One session for every model call of this process: connections are kept alive and reused.
        async with process_session():
            heartbeats = asyncio.create_task(self.maintain_heartbeats_async())
            suspension = asyncio.create_task(self.watch_suspension())
            try:
                await self.dequeue_until_stopped(burst=burst, max_jobs=max_jobs)
                await self.drain()
            finally:
                heartbeats.cancel()
                suspension.cancel()
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
            if not self._resumed.is_set():
                if burst:
                    self.log.info("Worker %s: suspended in burst mode, taking no more jobs", self.name)
                    break
                await self.stay_suspended()
                continue
            free = self.concurrency - len(self.in_flight)
            if free <= 0:
                # Woken when a job ends or a stop is requested.
                self._wake.clear()
                await self._wake.wait()
                continue
            if max_jobs is not None:
                free = min(free, max_jobs - started)
            try:
                jobs = await asyncio.to_thread(self.take_jobs, free, wait=not (burst or is_backlogged))
            except REDIS_OUTAGES as exc:
                await self.wait_out_outage(exc)
                continue
            self._outage_pause = 0.0
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

    async def wait_out_outage(self, exc: Exception) -> None:
        """Pause before dequeuing again after Redis failed, doubling the pause while the
        outage lasts: the worker outlives a Redis restart instead of exiting (jobs in flight
        run on; their bookkeeping failures are logged and the reconciler repairs them)."""
        self._outage_pause = min(2 * self._outage_pause, LAST_OUTAGE_PAUSE) or FIRST_OUTAGE_PAUSE
        self.log.warning("Worker %s: Redis unavailable (%s); dequeuing again in %.1f s", self.name, exc, self._outage_pause)
        try:
            await asyncio.wait_for(self._stopping.wait(), self._outage_pause)
        except TimeoutError:
            pass

    # -- rq suspend ----------------------------------------------------------------------

    async def look_for_suspension(self) -> None:
        """Read RQ's suspension flag (`rq suspend` / `rq resume`) and wake the loop on a change."""
        if await asyncio.to_thread(is_suspended, self.connection):
            self._resumed.clear()
        elif not self._resumed.is_set():
            self._resumed.set()
            self._wake.set()

    async def watch_suspension(self) -> None:
        while True:
            await asyncio.sleep(SUSPENSION_POLL_SECONDS)
            try:
                await self.look_for_suspension()
            except Exception:
                self.log.exception("Worker %s: could not read the suspension flag", self.name)

    async def stay_suspended(self) -> None:
        """Take no job until `rq resume` or a stop; the jobs in flight run on meanwhile.

        The loop reports SUSPENDED only from here, between two dequeues: once RQ shows the
        worker suspended, no dequeue of it is under way.
        """
        self.log.info("Worker %s: suspended, run `rq resume` to resume", self.name)
        await asyncio.to_thread(self.set_state, WorkerStatus.SUSPENDED)
        while not (self._resumed.is_set() or self._stopping.is_set()):
            # Woken when a job ends, the flag changes or a stop is requested.
            self._wake.clear()
            await self._wake.wait()
        await asyncio.to_thread(self.set_state, WorkerStatus.BUSY if self.in_flight else WorkerStatus.IDLE)
        self.log.info("Worker %s: resumed", self.name)

    # -- running jobs --------------------------------------------------------------------

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

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Return how long the job's place in the started registry lasts unless renewed.

        Three heartbeat intervals: two renewals may be late (a busy loop) before the job
        counts as abandoned, and the reconciler's `StartedJobRegistry.cleanup` runs it again
        (`realms.lifecycle.fail_crashed_query`) within seconds of its worker's death.
        """
        interval = self.job_monitoring_interval
        if job.timeout is None or job.timeout <= 0:
            return 3 * interval
        return int(min(job.timeout - working_time, interval)) + 2 * interval

    async def run_job(self, job: Job, queue: Queue, execution: Execution) -> None:
        timeout = job.timeout if job.timeout is not None else self.queue_class.DEFAULT_TIMEOUT
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None) as deadline:
                return_value = await self.perform_async(job)
        except asyncio.CancelledError:
            if execution.id in self._stopped_executions:
                self._stopped_executions.discard(execution.id)
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
            if self.is_batchable(job, return_value):
                await self.record_success(job, queue, execution, return_value)
            else:
                await self.in_thread(self.record_success_alone, job, queue, execution, return_value)
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
        record = self.record_stopped if isinstance(exc_info[1], JobStoppedOnRequest) else self.record_failure
        try:
            await self.in_thread(record, job, queue, execution, exc_info)
        except Exception:
            self.log.exception("Worker %s: could not record the failure of job %s", self.name, job.id)
        self.completed_jobs += 1

    async def in_thread(self, function, *args):
        return await SyncToAsync(function, thread_sensitive=False, executor=self._threads)(*args)

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
        self.note_shutdown_requested()
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
        """RQ's `stop-execution` and `stop-job` commands (from the pubsub thread): cancel that
        job alone; it ends STOPPED."""
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

