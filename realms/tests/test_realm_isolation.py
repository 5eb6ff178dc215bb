"""Realms fail and scale on their own: a swamped $IMAGINE does not hold up $CHAT, and a realm
with no worker of its own borrows one from another realm."""
import pytest
from asgiref.sync import sync_to_async

from accounts.models import Query
from rentahal import metrics
from rentahal.sharding import shard_for_query

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def submit(query_type: str, prompt: str) -> dict:
    return {"type": "submit_query", "query": {"prompt": prompt, "query_type": query_type, "model_type": "worker_node", "model_name": ""}}


def query_status(query_id: str) -> str:
    return Query.objects.using(shard_for_query(query_id)).get(pk=query_id).status


async def test_chat_keeps_answering_while_imagine_is_saturated(
    start_worker, slow_server, fake_server, register_worker, alice, connect
):
    # One slow image server taking one query at a time: three images queue up behind it.
    await sync_to_async(register_worker)(slow_server, "a1111", query_type="imagine", realm="$IMAGINE", max_concurrency=1)
    await sync_to_async(register_worker)(fake_server, "openai", query_type="chat", realm="$CHAT")
    await sync_to_async(start_worker)("$IMAGINE")
    await sync_to_async(start_worker)("$CHAT")
    client = await connect(alice.guid)
    image_ids = []
    for index in range(3):
        await client.send(submit("imagine", f"fox number {index}"))
        image_ids.append((await client.receive_until("queue_update"))[-1]["query_id"])

    await client.send(submit("chat", "are you still there?"))
    frames = await client.receive_until("query_result")

    answer = frames[-1]
    assert "are you still there?" in answer["result"]
    assert answer["query_id"] not in image_ids
    statuses = [await sync_to_async(query_status)(query_id) for query_id in image_ids]
    assert statuses.count(Query.Status.DONE) < 3
    assert [frame for frame in frames if frame.get("query_id") in image_ids and frame["type"] == "query_result"] == []


async def test_a_realm_without_workers_borrows_one_from_another_realm(
    start_worker, fake_server, register_worker, alice, connect
):
    await sync_to_async(register_worker)(fake_server, "openai", query_type="chat", name="vision-hosted-chat", realm="$VISION")
    await sync_to_async(start_worker)("$CHAT")
    client = await connect(alice.guid)

    await client.send(submit("chat", "anyone home?"))
    frames = await client.receive_until("query_result")

    assert frames[0]["realm"] == "$CHAT"
    assert frames[-1]["worker"] == "vision-hosted-chat"
    assert "anyone home?" in frames[-1]["result"]
    chat = await sync_to_async(metrics.realm_metrics)("$CHAT", workers=0)
    assert chat["cross_realm_requests"] == 1
    assert chat["queries_processed"] == 1
