"""Lost or thrown-away work is found and run again (README, "Lost work is re-run"): a job
popped by a worker that died before starting it, the queries of a killed worker, an answer
that arrived while Postgres was unreachable. Each fault is real: a worker's own pop, a
SIGKILL, the test databases refusing every connection."""
import asyncio
import datetime
import os
import signal
import time

import pytest
from asgiref.sync import sync_to_async
from rq.job import Job
from rq.scheduler import RQScheduler

from accounts.models import Charge, Query
from conftest import WORKER_KINDS
from realms.models import Realm
from realms.reconcile import reconcile_queries
from rentahal.queues import get_queue, redis_connection
from rentahal.worker import ConcurrentWorker
from tests.outages import set_test_databases_reachable

pytestmark = pytest.mark.django_db(transaction=True)

# The recovery bound README.md documents, for faults the tests cause at a known moment.
RECOVERY_BOUND_SECONDS = 30


async def submit(client, prompt: str) -> str:
    await client.send({"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat"}})
    return (await client.receive_until("queue_update"))[-1]["query_id"]


def pop_without_starting() -> int:
    """Pop the waiting jobs as the default worker of every realm does, and stop there, as a
    worker killed between its pop and its start would."""
    queues = [get_queue(realm.queue_name) for realm in Realm.objects.all()]
    worker = ConcurrentWorker(queues, connection=redis_connection())
    return len(worker.dequeue_ready(100))


def query_statuses(query_ids) -> set:
    return {Query.objects.get(pk=query_id).status for query_id in query_ids}


async def wait_until_running(query_ids) -> None:
    deadline = time.monotonic() + 20
    while await sync_to_async(query_statuses)(query_ids) != {Query.Status.RUNNING}:
        assert time.monotonic() < deadline, "the queries never started"
        await asyncio.sleep(0.1)


async def results_while_reconciling(client, count: int) -> list[dict]:
    """Run the reconciler every second, as run_broker does every few, and return the first
    `count` results and errors the client is pushed, failing past the recovery bound."""
    frames = []
    deadline = time.monotonic() + RECOVERY_BOUND_SECONDS
    while len(frames) < count:
        assert time.monotonic() < deadline, f"only {frames} arrived within {RECOVERY_BOUND_SECONDS} s"
        await sync_to_async(reconcile_queries)()
        # `receive` would cancel the socket's application when it times out; this does not.
        if await client.communicator.receive_nothing(timeout=1):
            continue
        frame = await client.receive()
        if frame["type"] in {"query_result", "error"}:
            frames.append(frame)
    return frames


async def test_a_job_popped_by_a_worker_killed_before_starting_it_is_run_again(
    start_worker, fake_server, register_worker, alice, connect, settings
):
    settings.RENTAHAL_RECONCILE_AFTER = 0
    await sync_to_async(register_worker)(fake_server, "openai")
    client = await connect(alice.guid)
    query_id = await submit(client, "popped and dropped")
    assert await sync_to_async(pop_without_starting)() == 1
    await asyncio.to_thread(start_worker, *WORKER_KINDS["concurrent"])

    frames = await results_while_reconciling(client, 1)

    assert [(frame["type"], frame["query_id"], frame.get("result")) for frame in frames] == [
        ("query_result", query_id, "echo: popped and dropped")
    ]


def hold_scheduler_locks() -> None:
    """Hold every realm queue's RQ scheduler lock, as the scheduler of a worker killed a moment
    ago (or one that died in a Redis restart) leaves it: no live scheduler enqueues reruns."""
    for realm in Realm.objects.all():
        redis_connection().set(RQScheduler.get_locking_key(realm.queue_name), "a-dead-worker", ex=600)


def schedule_rerun_now(query_id: str) -> None:
    """Take the query's job off its queue and schedule it for a moment ago, as RQ's retry of
    a crashed run does after its pause (realms.lifecycle.RERUN_PAUSES)."""
    job = Job.fetch(query_id, connection=redis_connection())
    queue = get_queue(job.origin)
    queue.remove(job)
    queue.schedule_job(job, datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1))


async def test_a_rerun_no_scheduler_enqueues_is_enqueued_by_the_reconciler_and_answered(
    start_worker, fake_server, register_worker, alice, connect, settings
):
    settings.RENTAHAL_RECONCILE_AFTER = 0
    await sync_to_async(register_worker)(fake_server, "openai")
    await sync_to_async(hold_scheduler_locks)()
    client = await connect(alice.guid)
    query_id = await submit(client, "rerun me")
    await sync_to_async(schedule_rerun_now)(query_id)
    await asyncio.to_thread(start_worker, *WORKER_KINDS["concurrent"])

    frames = await results_while_reconciling(client, 1)

    assert [(frame["type"], frame["query_id"], frame.get("result")) for frame in frames] == [
        ("query_result", query_id, "echo: rerun me")
    ]


async def test_queries_in_flight_on_a_killed_worker_are_run_again_and_charged_once(
    start_worker, fake_servers, register_worker, alice, connect
):
    server = fake_servers(delay=2.0)
    await sync_to_async(register_worker)(server, "openai")
    victim = await asyncio.to_thread(start_worker, *WORKER_KINDS["concurrent"])
    client = await connect(alice.guid)
    query_ids = [await submit(client, f"question {n}") for n in range(3)]
    await wait_until_running(query_ids)

    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    await asyncio.to_thread(start_worker, *WORKER_KINDS["concurrent"])
    frames = await results_while_reconciling(client, 3)

    assert sorted((frame["type"], frame["query_id"]) for frame in frames) == sorted(
        ("query_result", query_id) for query_id in query_ids
    )
    assert await sync_to_async(query_statuses)(query_ids) == {Query.Status.DONE}
    assert await sync_to_async(Charge.objects.filter(query_id__in=query_ids).count)() == 3


WORKER_APPLICATION_NAME = "rentahal-test-worker"


async def test_an_answer_that_comes_while_postgres_is_down_is_stored_once_it_is_back(
    start_worker, fake_servers, register_worker, alice, connect, monkeypatch
):
    server = fake_servers(delay=1.0)
    await sync_to_async(register_worker)(server, "openai")
    monkeypatch.setenv("PGAPPNAME", WORKER_APPLICATION_NAME)
    await asyncio.to_thread(start_worker, *WORKER_KINDS["concurrent"])
    monkeypatch.delenv("PGAPPNAME")
    client = await connect(alice.guid)
    query_id = await submit(client, "answered in the dark")
    await wait_until_running([query_id])

    await sync_to_async(set_test_databases_reachable)(False, application_name=WORKER_APPLICATION_NAME)
    try:
        # The model answers after 1 s; the finish meets the closed databases.
        await asyncio.sleep(4)
    finally:
        await sync_to_async(set_test_databases_reachable)(True)
    frame = await client.receive_until("query_result", timeout=RECOVERY_BOUND_SECONDS)

    assert (frame[-1]["query_id"], frame[-1]["result"]) == (query_id, "echo: answered in the dark")
    assert await sync_to_async(query_statuses)([query_id]) == {Query.Status.DONE}
    assert await sync_to_async(Charge.objects.filter(query_id=query_id).count)() == 1
