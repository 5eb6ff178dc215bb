"""The concurrent RQ worker: many queries in flight in one process, RQ's registries kept,
warm shutdown that loses nothing, a job over its timeout failing alone, and `rq suspend` /
`rq resume` pausing and resuming it.

The end-to-end query path tests in test_query_path.py run against this worker too
(conftest's `rq_worker` fixture is parametrized over worker kinds)."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from rq import Callback
from rq import Worker as RQWorker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from accounts.actions.queries import accept_query
from accounts.models import Charge, Query
from conftest import start_rq_worker, stop_rq_worker
from realms.lifecycle import enqueue_query, fail_crashed_query, run_query
from realms.models import Realm
from rentahal.queues import get_queue

pytestmark = pytest.mark.django_db(transaction=True)


def chat_realm() -> Realm:
    return Realm.objects.get(query_type="chat")


def accept_chat(user, prompt: str, *, job_timeout: int | None = None) -> Query:
    """Accept a chat query as the consumer would; `job_timeout` overrides the job's timeout."""
    realm = chat_realm()
    query = accept_query(
        user.guid, query_type="chat", prompt=prompt, model_type="worker_node", model_name="", image="",
        realm=realm.name,
    )
    if job_timeout is None:
        enqueue_query(query, realm.queue_name)
    else:
        get_queue(realm.queue_name).enqueue(
            run_query,
            str(query.id),
            job_id=str(query.id),
            job_timeout=job_timeout,
            on_failure=Callback(fail_crashed_query),
        )
    return query


def wait_until(condition, timeout: float = 30, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {message}")
        time.sleep(0.05)


def statuses(queries) -> list[str]:
    return [Query.objects.get(pk=query.pk).status for query in queries]


def started_count() -> int:
    return StartedJobRegistry(chat_realm().queue_name, connection=get_queue("default").connection).count


def rq_command(*arguments: str) -> None:
    """Run RQ's own command line (`rq suspend`, `rq resume`) against the tests' Redis."""
    rq = Path(sys.executable).parent / "rq"
    subprocess.run([str(rq), *arguments, "--url", settings.REDIS_URL], check=True, capture_output=True, timeout=30)


def worker_states(connection) -> list[str]:
    return [worker.get_state() for worker in RQWorker.all(connection=connection)]


def waiting_count() -> int:
    return get_queue(chat_realm().queue_name).count


@pytest.fixture
def slow_fake_server(fake_server, register_worker):
    """A fake openai-format server that takes 2 s per answer, registered as the chat worker."""
    register_worker(fake_server, "openai")
    fake_server.configure(delay=2.0)
    return fake_server


def test_one_worker_process_keeps_many_queries_in_flight_and_records_them_in_rq(
    slow_fake_server, default_realms, alice, clean_redis
):
    worker = start_rq_worker(clean_redis, "--concurrency", "16")
    try:
        queries = [accept_chat(alice, f"question {n}") for n in range(8)]

        wait_until(lambda: started_count() == 8, message="8 jobs in the started registry at once")
        wait_until(lambda: set(statuses(queries)) == {Query.Status.DONE}, message="every query done")
    finally:
        stop_rq_worker(worker)

    queue = get_queue(chat_realm().queue_name)
    finished = FinishedJobRegistry(queue.name, connection=queue.connection).get_job_ids()
    assert sorted(finished) == sorted(str(query.id) for query in queries)
    assert started_count() == 0
    assert Charge.objects.count() == 8
    for query in queries:
        assert Job.fetch(str(query.id), connection=queue.connection).return_value() == "done"


@pytest.mark.parametrize(
    ("grace", "finished_by"),
    [("30", "the same worker, within its grace period"), ("0.2", "the next worker, after a requeue")],
    ids=["finish-within-grace", "requeue-after-grace"],
)
def test_warm_shutdown_with_queries_in_flight_loses_none_and_charges_none_twice(
    grace, finished_by, slow_fake_server, default_realms, alice, clean_redis
):
    worker = start_rq_worker(clean_redis, "--concurrency", "16", "--shutdown-grace", grace)
    queries = [accept_chat(alice, f"question {n}") for n in range(6)]
    wait_until(lambda: started_count() == 6, message="6 jobs in flight")

    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, "the worker exits cleanly on SIGTERM"

    slow_fake_server.configure(delay=0.0)
    successor = start_rq_worker(clean_redis, "--concurrency", "16")
    try:
        wait_until(lambda: set(statuses(queries)) == {Query.Status.DONE}, message=f"every query done by {finished_by}")
    finally:
        stop_rq_worker(successor)

    assert started_count() == 0
    assert Charge.objects.count() == 6
    for query in queries:
        assert Charge.objects.filter(query_id=query.pk).count() == 1


def test_job_over_its_timeout_fails_alone_while_its_siblings_finish(
    slow_fake_server, default_realms, alice, clean_redis, monkeypatch
):
    # The model call itself must not give up first: only the job timeout may end it.
    monkeypatch.setenv("MODEL_READ_TIMEOUT", "60")
    worker = start_rq_worker(clean_redis, "--concurrency", "16")
    try:
        doomed = accept_chat(alice, "too slow", job_timeout=1)
        siblings = [accept_chat(alice, f"sibling {n}") for n in range(3)]

        wait_until(
            lambda: all(status in Query.FINISHED for status in statuses([doomed, *siblings])),
            message="all four queries finished",
        )
    finally:
        stop_rq_worker(worker)

    doomed = Query.objects.get(pk=doomed.pk)
    assert doomed.status == Query.Status.FAILED
    assert doomed.error == "no answer within 1 seconds"
    assert statuses(siblings) == [Query.Status.DONE] * 3
    assert not Charge.objects.filter(query_id=doomed.pk).exists()
    assert Charge.objects.count() == 3
    queue = get_queue(chat_realm().queue_name)
    failed = FailedJobRegistry(queue.name, connection=queue.connection)
    assert failed.get_job_ids() == [str(doomed.id)]
    assert "JobTimeoutException" in Job.fetch(str(doomed.id), connection=queue.connection).latest_result().exc_string


def test_a_query_sent_while_rq_is_suspended_waits_in_its_queue_until_rq_resume(
    fake_server, register_worker, default_realms, alice, clean_redis
):
    register_worker(fake_server, "openai")
    worker = start_rq_worker(clean_redis, "--concurrency", "16")
    try:
        rq_command("suspend")
        wait_until(lambda: worker_states(clean_redis) == ["suspended"], message="the worker to report suspended")
        query = accept_chat(alice, "sent while suspended")

        time.sleep(3)
        assert (statuses([query]), waiting_count()) == ([Query.Status.ACCEPTED], 1)

        rq_command("resume")
        wait_until(lambda: statuses([query]) == [Query.Status.DONE], message="the query done after resume")
    finally:
        stop_rq_worker(worker)

    assert waiting_count() == 0
    assert Charge.objects.filter(query_id=query.pk).count() == 1


def test_a_query_in_flight_when_rq_is_suspended_still_finishes(
    slow_fake_server, default_realms, alice, clean_redis
):
    worker = start_rq_worker(clean_redis, "--concurrency", "16")
    try:
        in_flight = accept_chat(alice, "already running")
        wait_until(lambda: started_count() == 1, message="the query in flight")

        rq_command("suspend")
        wait_until(lambda: worker_states(clean_redis) == ["suspended"], message="the worker to report suspended")
        wait_until(lambda: statuses([in_flight]) == [Query.Status.DONE], message="the query in flight done")
    finally:
        rq_command("resume")
        stop_rq_worker(worker)

    assert Charge.objects.filter(query_id=in_flight.pk).count() == 1
