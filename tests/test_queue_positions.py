"""A query's place in its realm's queue moves: /ws sockets are sent `queue_update` again when
the queries ahead of theirs leave the queue, and only then (realms.positions)."""
import pytest
from asgiref.sync import sync_to_async as sync

pytestmark = pytest.mark.django_db(transaction=True)


def chat(prompt: str) -> dict:
    return {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": ""}}


async def test_a_waiting_query_is_told_its_smaller_place_once_the_query_ahead_finishes(
    start_worker, fake_servers, register_worker, alice, connect
):
    # One query at a time, each answered after 2 s: the others wait in the realm's queue.
    await sync(register_worker)(fake_servers(delay=2.0), "openai")
    start_worker("--concurrency", "1")
    client = await connect(alice.guid)
    for prompt in ("first", "second", "third"):
        await client.send(chat(prompt))
    acks = [(await client.receive_until("queue_update"))[-1] for _ in range(3)]
    first, third = acks[0]["query_id"], acks[2]["query_id"]

    while_first_ran = await client.receive_until("query_result", timeout=30)
    while True:
        update = await client.receive(timeout=30)
        if update["type"] == "queue_update" and update["query_id"] == third:
            break

    assert while_first_ran[-1]["query_id"] == first
    assert [frame for frame in while_first_ran if frame["type"] == "queue_update"] == []
    assert acks[2]["depth"] == 2
    assert update == {"type": "queue_update", "depth": 1, "total": 1, "query_id": third, "realm": "$CHAT"}
