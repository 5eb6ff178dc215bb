"""The concurrent worker's RQ bookkeeping in batches: jobs popped, started and recorded as
finished together end up exactly where RQ's own worker would put them, with their results,
dependents, callbacks and the worker's counters, in a number of round trips that does not
grow with the batch.

Each test runs a `ConcurrentWorker` in burst mode in this process on a queue of its own."""
import asyncio
import threading
import time
from collections import Counter

import pytest
from rq import Callback, Queue
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus
from rq.registry import FinishedJobRegistry, StartedJobRegistry
from rq.worker import Worker

from rentahal.worker import ConcurrentWorker


async def double(number: int) -> int:
    return 2 * number


async def unpicklable() -> object:
    return lambda: None


def remember_result(job, connection, result, *args, **kwargs):
    connection.set(f"callback-saw:{job.id}", result)


@pytest.fixture
def queue(clean_redis) -> Queue:
    return Queue("batches", connection=clean_redis)


def run_burst_worker(*queues: Queue) -> ConcurrentWorker:
    """Run a concurrent worker until its queues are empty and its jobs are done."""
    worker = ConcurrentWorker(list(queues), connection=queues[0].connection, concurrency=64)
    worker.work(burst=True)
    return worker


def worker_counters(worker: ConcurrentWorker) -> tuple[int, float]:
    seen = Worker.find_by_key(worker.key, connection=worker.connection)
    return seen.successful_job_count, seen.total_working_time


def test_jobs_that_finish_together_are_all_finished_in_rq_with_their_results(queue, clean_redis):
    jobs = [queue.enqueue(double, number) for number in range(20)]

    worker = run_burst_worker(queue)

    finished = FinishedJobRegistry(queue.name, connection=clean_redis)
    assert sorted(finished.get_job_ids()) == sorted(job.id for job in jobs)
    assert StartedJobRegistry(queue.name, connection=clean_redis).count == 0
    for number, job in enumerate(jobs):
        fetched = Job.fetch(job.id, connection=clean_redis)
        assert (fetched.get_status(), fetched.return_value()) == (JobStatus.FINISHED, 2 * number)
        assert fetched.worker_name == worker.name
    successes, working_time = worker_counters(worker)
    assert successes == 20
    assert working_time > 0
    assert [fetched.get_executions() for fetched in Job.fetch_many([job.id for job in jobs], clean_redis)] == [[]] * 20


def test_a_finished_job_still_enqueues_and_runs_its_dependent(queue, clean_redis):
    parent = queue.enqueue(double, 1)
    child = queue.enqueue(double, 2, depends_on=parent)
    unrelated = queue.enqueue(double, 3)

    run_burst_worker(queue)

    for job, expected in ((parent, 2), (child, 4), (unrelated, 6)):
        fetched = Job.fetch(job.id, connection=clean_redis)
        assert (fetched.get_status(), fetched.return_value()) == (JobStatus.FINISHED, expected)


def test_a_success_callback_still_runs_with_the_jobs_result(queue, clean_redis):
    job = queue.enqueue(double, 21, on_success=Callback(remember_result))
    plain = queue.enqueue(double, 1)

    run_burst_worker(queue)

    assert clean_redis.get(f"callback-saw:{job.id}") == b"42"
    assert Job.fetch(job.id, connection=clean_redis).get_status() == JobStatus.FINISHED
    assert Job.fetch(plain.id, connection=clean_redis).return_value() == 2


def test_a_result_that_cannot_be_stored_does_not_hold_up_the_jobs_finishing_with_it(queue, clean_redis):
    queue.enqueue(unpicklable)
    siblings = [queue.enqueue(double, number) for number in range(5)]

    run_burst_worker(queue)

    for number, job in enumerate(siblings):
        fetched = Job.fetch(job.id, connection=clean_redis)
        assert (fetched.get_status(), fetched.return_value()) == (JobStatus.FINISHED, 2 * number)


def test_jobs_of_the_first_queue_start_before_those_of_the_next(clean_redis):
    first, second = Queue("first", connection=clean_redis), Queue("second", connection=clean_redis)
    later = [second.enqueue(double, number) for number in range(3)]
    sooner = [first.enqueue(double, number) for number in range(3)]

    run_burst_worker(first, second)

    started = {job.id: Job.fetch(job.id, connection=clean_redis).started_at for job in sooner + later}
    assert max(started[job.id] for job in sooner) < min(started[job.id] for job in later)


def test_a_worker_of_one_queue_leaves_nothing_in_its_intermediate_queue(queue, clean_redis):
    for number in range(5):
        queue.enqueue(double, number)

    run_burst_worker(queue)

    assert clean_redis.llen(queue.intermediate_queue_key) == 0
    assert FinishedJobRegistry(queue.name, connection=clean_redis).count == 5


def test_twenty_waiting_jobs_take_as_many_transactions_as_one(queue, redis_commands):
    """Starting jobs and recording their success are one transaction each per batch, and the
    batch's dependents are checked once (one WATCH)."""

    def run(jobs: int) -> Counter:
        for number in range(jobs):
            queue.enqueue(double, number)
        with redis_commands() as commands:
            run_burst_worker(queue)
        return Counter(command for command in commands if command in ("MULTI", "WATCH"))

    assert run(20) == run(1)


def test_rqs_stop_job_command_stops_that_job_alone_whichever_of_the_jobs_in_flight_it_is(queue, clean_redis):
    sibling = queue.enqueue(asyncio.sleep, 1, "slept")
    doomed = queue.enqueue(asyncio.sleep, 30)

    def stop_when_started():
        while Job.fetch(doomed.id, connection=clean_redis).get_status() != JobStatus.STARTED:
            time.sleep(0.05)
        send_stop_job_command(clean_redis, doomed.id)

    stopper = threading.Thread(target=stop_when_started)
    stopper.start()
    run_burst_worker(queue)
    stopper.join()

    assert Job.fetch(doomed.id, connection=clean_redis).get_status() == JobStatus.STOPPED
    assert Job.fetch(sibling.id, connection=clean_redis).return_value() == "slept"
