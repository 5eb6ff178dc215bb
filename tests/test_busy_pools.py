"""A busy pool means waiting, not failure (README.md, Fair share): queries whose members are
all at their cap wait in a line fair between users and go back on the realm's queue, until a
member is free or QUEUE_WAIT_LIMIT_SECONDS pass; a realm with nobody to serve fails at once."""
import pytest
from asgiref.sync import sync_to_async

from accounts.models import Charge, Query

pytestmark = pytest.mark.django_db(transaction=True)


def chat(prompt: str) -> dict:
    return {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat", "model_type": "worker_node"}}


async def results_of(client, query_ids: list[str], *, timeout: float) -> dict[str, dict]:
    """Read until every query in `query_ids` ended; return each one's `query_result` or
    `error` frame by id (frames read before count too)."""
    while True:
        ended = {
            frame["query_id"]: frame
            for frame in client.frames
            if frame["type"] in ("query_result", "error") and frame.get("query_id") in query_ids
        }
        if len(ended) == len(query_ids):
            return ended
        await client.receive(timeout=timeout)


async def submit(client, count: int, prefix: str) -> list[str]:
    ids = []
    for number in range(count):
        await client.send(chat(f"{prefix} {number}"))
        ids.append((await client.receive_acknowledgement())["query_id"])
    return ids


def finished_while_waiting(flooder: str, query_id: str) -> int:
    """Return how many of the flooder's queries finished while `query_id` waited."""
    query = Query.objects.get(pk=query_id)
    return Query.objects.filter(
        user_id=flooder, finished_at__gt=query.accepted_at, finished_at__lt=query.finished_at
    ).count()


async def test_a_burst_of_three_times_the_pools_capacity_all_end_done_billed_for_service_only(
    start_worker, fake_servers, register_worker, alice, connect, monkeypatch
):
    monkeypatch.setenv("BUSY_WAIT_SECONDS", "0.3")
    await sync_to_async(register_worker)(fake_servers(delay=0.5), "openai", max_concurrency=2)
    await sync_to_async(start_worker)("--concurrency", "16", "$CHAT")
    client = await connect(alice.guid)

    ids = await submit(client, 6, "burst")
    ended = await results_of(client, ids, timeout=60)

    assert sorted(frame["type"] for frame in ended.values()) == ["query_result"] * 6
    rows = await sync_to_async(list)(Query.objects.filter(user_id=alice.guid))
    assert sorted(row.status for row in rows) == [Query.Status.DONE] * 6
    assert await sync_to_async(Charge.objects.filter(user_id=alice.guid).count)() == 6
    # The last served waited two services of 0.5 s before its own; it is billed for its own.
    last = max(rows, key=lambda row: row.finished_at)
    assert last.processing_time < (last.finished_at - last.accepted_at).total_seconds() - 0.9


# Two of RQ's one-job workers, or one concurrent worker: either way a second query finds the
# server's one slot taken.
@pytest.mark.parametrize("concurrency, workers", [("1", 2), ("16", 1)], ids=["simple", "concurrent"])
async def test_a_query_put_back_to_wait_is_logged_as_waiting_not_as_a_crashed_job(
    concurrency, workers, start_worker, fake_servers, register_worker, alice, connect, monkeypatch, capfd
):
    monkeypatch.setenv("BUSY_WAIT_SECONDS", "0.3")
    await sync_to_async(register_worker)(fake_servers(delay=0.5), "openai", max_concurrency=1)
    for _ in range(workers):
        await sync_to_async(start_worker)("--concurrency", concurrency, "$CHAT")
    client = await connect(alice.guid)

    ids = await submit(client, 3, "wait")
    ended = await results_of(client, ids, timeout=60)

    assert sorted(frame["type"] for frame in ended.values()) == ["query_result"] * 3
    worker_log = capfd.readouterr().err
    assert "waits for a free worker" in worker_log
    assert "WaitingForWorker" not in worker_log and " ERROR " not in worker_log


async def test_while_one_user_floods_a_busy_pool_another_users_query_takes_the_next_free_slot(
    start_worker, fake_servers, register_worker, alice, bob, connect
):
    await sync_to_async(register_worker)(fake_servers(delay=0.5), "openai", max_concurrency=2)
    await sync_to_async(start_worker)("--concurrency", "32", "$CHAT")
    flooder, other = await connect(alice.guid), await connect(bob.guid)
    flood = await submit(flooder, 14, "flood")
    while await sync_to_async(Query.objects.filter(user_id=alice.guid, status=Query.Status.DONE).count)() < 2:
        await flooder.receive(timeout=30)

    bobs_id = (await submit(other, 1, "my turn?"))[0]
    bobs_end = await results_of(other, [bobs_id], timeout=60)
    flood_ended = await results_of(flooder, flood, timeout=60)

    assert bobs_end[bobs_id]["type"] == "query_result"
    assert {frame["type"] for frame in flood_ended.values()} == {"query_result"}
    # Behind the two calls being made and at most the head of the flood's line, not the other ten.
    assert await sync_to_async(finished_while_waiting)(alice.guid, bobs_id) <= 4


async def test_a_query_waiting_for_a_busy_pool_is_told_its_place_in_line_as_it_moves(
    start_worker, fake_servers, register_worker, alice, bob, connect
):
    await sync_to_async(register_worker)(fake_servers(delay=1.0), "openai", max_concurrency=1)
    await sync_to_async(start_worker)("--concurrency", "16", "$CHAT")
    first, other = await connect(alice.guid), await connect(bob.guid)
    await submit(first, 1, "served first")
    bobs_id = (await submit(other, 1, "next in line"))[0]
    told = await other.receive_until("queue_update", timeout=30)
    assert (told[-1]["query_id"], told[-1]["depth"]) == (bobs_id, 1)

    third = (await submit(first, 1, "behind bob"))[0]
    await results_of(first, [third], timeout=60)

    places = [frame["depth"] for frame in first.frames if frame["type"] == "queue_update" and frame["query_id"] == third]
    assert places[1:] == [2, 1]


async def test_a_query_that_waits_past_the_queue_wait_limit_fails_with_the_reason_and_is_not_charged(
    start_worker, fake_servers, register_worker, alice, connect, monkeypatch
):
    monkeypatch.setenv("BUSY_WAIT_SECONDS", "0.3")
    monkeypatch.setenv("QUEUE_WAIT_LIMIT_SECONDS", "2")
    monkeypatch.setenv("MODEL_READ_TIMEOUT", "60")
    await sync_to_async(register_worker)(fake_servers(hang=True), "openai", max_concurrency=1)
    await sync_to_async(start_worker)("--concurrency", "4", "--shutdown-grace", "1", "$CHAT")
    client = await connect(alice.guid)
    await submit(client, 1, "hangs")

    waiting = (await submit(client, 1, "waits"))[0]
    error = (await client.receive_until("error", timeout=30))[-1]

    assert error["query_id"] == waiting
    assert error["message"].startswith("Query failed: No chat worker is available")
    assert "seconds for a free one (the limit is 2)" in error["message"]
    stored = await sync_to_async(Query.objects.get)(pk=waiting)
    assert (stored.status, stored.cost) == (Query.Status.FAILED, 0)
    assert not await sync_to_async(Charge.objects.filter(user_id=alice.guid).exists)()


@pytest.mark.parametrize("members", ["none", "blacklisted"])
async def test_a_realm_with_nobody_to_serve_fails_at_once_however_long_queries_may_wait(
    members, start_worker, fake_servers, register_worker, alice, connect, monkeypatch
):
    monkeypatch.setenv("BUSY_WAIT_SECONDS", "60")
    monkeypatch.setenv("QUEUE_WAIT_LIMIT_SECONDS", "600")
    if members == "blacklisted":
        await sync_to_async(register_worker)(fake_servers(), "openai", health_score=0)
    await sync_to_async(start_worker)("--concurrency", "4", "$CHAT")
    client = await connect(alice.guid)

    query_id = (await submit(client, 1, "anyone?"))[0]
    error = (await client.receive_until("error", timeout=30))[-1]

    assert error["query_id"] == query_id
    assert error["message"].startswith("Query failed: No chat worker is available")
    assert await sync_to_async(Query.objects.values_list("attempts", flat=True).get)(pk=query_id) == 1
