"""A Postgres restart, found by the chaos suite: seen from /ws (docs/protocol.md §1) a frame
is answered with a `temporarily_unavailable` error and the socket stays open, a handshake is
told to retry and closed with 1013, never a close with 1011; the reconciler lives through it
and goes on finding lost work. The outage is real: the test databases refuse every new
connection and drop the reconciler's, as they do while Postgres restarts."""
import asyncio
import contextlib
import subprocess
import sys
import time

import pytest
from channels.db import database_sync_to_async
from django.db import connections
from rq.job import Job

from accounts.actions.queries import accept_query
from conftest import PROJECT_DIR, worker_environment
from realms.consumers import TRY_AGAIN_LATER
from rentahal.queues import redis_connection
from tests.test_recovery import WORKER_APPLICATION_NAME, set_test_databases_reachable

pytestmark = pytest.mark.django_db(transaction=True)

OUTAGE_ANSWER_TIMEOUT = 30


@contextlib.asynccontextmanager
async def postgres_down():
    await database_sync_to_async(set_test_databases_reachable)(False)
    try:
        yield
    finally:
        await database_sync_to_async(set_test_databases_reachable)(True)


async def test_a_frame_sent_while_postgres_is_down_is_answered_with_a_retry_error_and_the_socket_stays_open(
    alice, connect
):
    client = await connect(alice.guid)
    async with postgres_down():
        await client.send({"type": "get_previous_queries"})
        answer = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)

    await client.send({"type": "get_previous_queries"})
    after = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)

    assert (answer["type"], answer["code"]) == ("error", "temporarily_unavailable")
    assert "try again" in answer["message"].lower()
    assert after == {"type": "previous_queries", "data": []}


async def test_a_connect_while_postgres_is_down_is_told_to_retry_and_closed_with_try_again_later(alice, connect):
    async with postgres_down():
        client = await connect(alice.guid, greeting=False)
        answer = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)
        closing = await client.communicator.receive_output(timeout=OUTAGE_ANSWER_TIMEOUT)

    assert (answer["type"], answer["code"]) == ("error", "temporarily_unavailable")
    assert closing == {"type": "websocket.close", "code": TRY_AGAIN_LATER}


async def wait_until_connected(application_name: str) -> None:
    """Wait until a process of that name holds a connection to the test databases (it has started its rounds)."""
    deadline = time.monotonic() + OUTAGE_ANSWER_TIMEOUT
    while not await database_sync_to_async(has_connection)(application_name):
        assert time.monotonic() < deadline, f"{application_name} never connected"
        await asyncio.sleep(0.2)


def has_connection(application_name: str) -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s", [application_name])
        return cursor.fetchone() is not None


async def test_the_reconciler_lives_through_a_postgres_outage_and_then_enqueues_lost_work(alice, default_realms):
    reconciler = subprocess.Popen(
        [sys.executable, "manage.py", "reconcile_queries", "--every", "0.5"],
        cwd=PROJECT_DIR,
        env={**worker_environment(), "PGAPPNAME": WORKER_APPLICATION_NAME, "RECONCILE_AFTER_SECONDS": "0"},
    )
    try:
        await wait_until_connected(WORKER_APPLICATION_NAME)
        async with postgres_down():
            await asyncio.sleep(3)
        # Accepted, but its job never reached Redis (a crash between commit and enqueue).
        query = await database_sync_to_async(accept_query)(
            alice.guid, query_type="chat", prompt="lost", model_type="worker_node", model_name="", image="", realm="$CHAT"
        )
        deadline = time.monotonic() + OUTAGE_ANSWER_TIMEOUT
        while not Job.exists(str(query.pk), connection=redis_connection()):
            assert reconciler.poll() is None, "the reconciler died in the outage"
            assert time.monotonic() < deadline, "the reconciler never enqueued the lost query"
            await asyncio.sleep(0.2)
    finally:
        reconciler.terminate()
        reconciler.wait(timeout=10)
