"""A Redis restart seen from /ws (docs/protocol.md §1): every socket is told to retry, none is
dropped with 1011, no handshake fails with HTTP 500, and the same socket works again once
Redis is back. Redis here is a server of the test's own, on a spare loopback port, stopped
and started again on that port mid-test."""
import contextlib
import time

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connections

from accounts.actions.queries import previous_queries
from accounts.models import Query
from conftest import start_rq_worker, stop_rq_worker
from realms import lifecycle
from realms.consumers import TRY_AGAIN_LATER
from realms.frames import parse_submission
from realms.reconcile import reconcile_queries
from rentahal import sharding
from rentahal.pushes import frame_event, user_group
from tests.outages import RestartableRedis, own_redis  # noqa: F401 - a fixture

pytestmark = pytest.mark.django_db(transaction=True)

SUBMISSION = {"prompt": "hello", "query_type": "chat", "model_type": "worker_node", "model_name": "fake-model"}
# redis-py retries a refused connection with backoff before it gives up, a few seconds at most.
OUTAGE_ANSWER_TIMEOUT = 30


async def answer_to(client, frame: dict) -> dict:
    await client.send(frame)
    return await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)


async def test_a_frame_sent_while_redis_is_down_is_answered_with_a_retry_error_and_the_socket_stays_open(
    own_redis, alice, connect
):
    client = await connect(alice.guid)
    own_redis.stop()

    answer = await answer_to(client, {"type": "submit_query", "query": SUBMISSION})

    assert answer["type"] == "error"
    assert answer["code"] == "temporarily_unavailable"
    assert "try again" in answer["message"].lower()
    assert (await answer_to(client, {"type": "get_previous_queries"}))["type"] == "previous_queries"


async def test_a_submit_refused_in_the_outage_leaves_no_query_behind(own_redis, alice, connect):
    client = await connect(alice.guid)
    own_redis.stop()
    await answer_to(client, {"type": "submit_query", "query": SUBMISSION})
    own_redis.start()

    previous = await answer_to(client, {"type": "get_previous_queries"})

    assert previous["data"] == []
    assert await database_sync_to_async(Query.objects.using(sharding.shard_for_guid(alice.guid)).count)() == 0


async def test_after_redis_returns_the_same_socket_submits_again(own_redis, alice, connect):
    client = await connect(alice.guid)
    own_redis.stop()
    await answer_to(client, {"type": "submit_query", "query": SUBMISSION})
    own_redis.start()

    answer = await answer_to(client, {"type": "submit_query", "query": SUBMISSION})

    assert answer["type"] == "queue_update"
    assert answer["query_id"]


async def test_after_redis_returns_a_socket_opened_before_the_outage_gets_its_pushes_again(own_redis, alice, connect):
    client = await connect(alice.guid)
    own_redis.stop()
    await answer_to(client, {"type": "get_previous_queries"})
    own_redis.start()

    layer = get_channel_layer()
    deadline = time.monotonic() + OUTAGE_ANSWER_TIMEOUT
    # The layer subscribes again on its next read after Redis is back; until then a push is lost.
    while True:
        await layer.group_send(user_group(alice.guid), frame_event({"type": "sysop_message", "message": "back"}))
        if not await client.communicator.receive_nothing(timeout=0.5):
            break
        assert time.monotonic() < deadline, "no push reached the socket after Redis returned"

    assert await client.receive() == {"type": "sysop_message", "message": "back"}


async def test_a_vision_chunk_sent_while_redis_is_down_is_answered_with_a_retry_error(own_redis, alice, connect):
    client = await connect(alice.guid)
    own_redis.stop()

    answer = await answer_to(
        client,
        {"type": "vision_chunk", "image_id": "img", "chunk_id": 0, "total_chunks": 2, "chunk_data": "aGVsbG8=", **SUBMISSION},
    )

    assert answer["code"] == "temporarily_unavailable"


async def test_a_connect_while_redis_is_down_is_told_to_retry_and_closed_with_try_again_later(own_redis, alice, connect):
    own_redis.stop()

    client = await connect(alice.guid, greeting=False)
    answer = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)
    closing = await client.communicator.receive_output(timeout=OUTAGE_ANSWER_TIMEOUT)

    assert answer["type"] == "error"
    assert answer["code"] == "temporarily_unavailable"
    assert closing == {"type": "websocket.close", "code": TRY_AGAIN_LATER}


async def test_a_connect_after_redis_returns_is_greeted_as_usual(own_redis, alice, connect):
    own_redis.stop()
    refused = await connect(alice.guid, greeting=False)
    await refused.receive(timeout=OUTAGE_ANSWER_TIMEOUT)
    own_redis.start()

    client = await connect(alice.guid, greeting=False)
    frames = await client.receive_until("huggingface_update", timeout=OUTAGE_ANSWER_TIMEOUT)

    assert [frame["type"] for frame in frames] == ["user_info", "previous_queries", "worker_update", "huggingface_update"]


@contextlib.contextmanager
def redis_stopped_once_a_query_row_is_inserted(server: RestartableRedis):
    """Stop Redis the moment a query's row is written: after the commit, before its job is enqueued."""
    table = Query._meta.db_table

    def stop_after_insert(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith(("INSERT", "WITH")) and table in sql and server.process is not None:
            server.stop()
        return result

    with contextlib.ExitStack() as stack:
        for alias in connections:
            stack.enter_context(connections[alias].execute_wrapper(stop_after_insert))
        yield


def test_a_query_whose_enqueue_meets_the_outage_is_acked_and_the_reconciler_runs_it_once_redis_returns(
    own_redis, alice, fake_server, register_worker, settings
):
    register_worker(fake_server, "openai", "chat")
    settings.RENTAHAL_RECONCILE_AFTER = 0

    with redis_stopped_once_a_query_row_is_inserted(own_redis):
        ack = lifecycle.accept_query(alice.guid, parse_submission(SUBMISSION))
    assert own_redis.process is None, "Redis was up for the enqueue"
    own_redis.start()
    reconcile_queries()
    worker = start_rq_worker(redis.Redis.from_url(own_redis.url), "--concurrency", "1")
    try:
        deadline = time.monotonic() + OUTAGE_ANSWER_TIMEOUT
        while previous_queries(alice)[0]["status"] not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_rq_worker(worker)

    assert ack["type"] == "queue_update"
    shown = previous_queries(alice)
    assert [(query["query_id"], query["status"]) for query in shown] == [(ack["query_id"], "done")]
