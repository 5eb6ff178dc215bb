"""What the broker sends a sysop's panel (`active_users`, `user_stats`, `worker_health` with
`system_stats`), what reaches the affected user when a sysop acts, and that terminating a
user's queries stops the model call that was running."""
import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from rq.job import Job

from accounts.models import Query
from pools import actions as pools
from rentahal.queues import redis_connection

pytestmark = pytest.mark.django_db(transaction=True)


async def stats_frames(client) -> dict:
    await client.send({"type": "get_stats"})
    return {frame["type"]: frame for frame in await client.receive_until("user_stats")}


async def test_get_stats_answers_with_system_stats_worker_health_active_users_and_user_stats(sysop, alice, bob, connect):
    await connect(alice.guid)
    sysop_tab = await connect(sysop.guid)

    frames = await stats_frames(sysop_tab)

    assert list(frames) == ["system_stats", "worker_health", "active_users", "user_stats"]
    assert frames["system_stats"]["data"]["online_users"] == 2
    assert sorted(user["nickname"] for user in frames["active_users"]["users"]) == ["alice", "sysop"]
    listed = {user["nickname"]: user for user in frames["user_stats"]["data"]}
    assert sorted(listed) == ["alice", "bob", "sysop"]
    assert (listed["alice"]["online"], listed["bob"]["online"]) == (True, False)
    assert listed["bob"]["query_count"] == 0


async def test_a_user_who_closes_their_last_tab_is_no_longer_active(sysop, alice, connect):
    alice_tab = await connect(alice.guid)
    sysop_tab = await connect(sysop.guid)

    await alice_tab.close()
    frames = await stats_frames(sysop_tab)

    assert [user["nickname"] for user in frames["active_users"]["users"]] == ["sysop"]


async def test_worker_health_lists_each_workers_live_state(sysop, fake_server, register_worker, connect):
    await sync_to_async(register_worker)(fake_server, "openai", "chat", name="gpu1", health_score=40)
    sysop_tab = await connect(sysop.guid)

    health = (await stats_frames(sysop_tab))["worker_health"]["data"]

    assert [(row["name"], row["health_score"], row["in_flight"], row["address"]) for row in health] == [
        ("gpu1", 40, 0, fake_server.url)
    ]


async def test_unban_reaches_the_users_open_sockets(sysop, alice, connect):
    alice_tab = await connect(alice.guid)
    sysop_tab = await connect(sysop.guid)

    await sysop_tab.send({"type": "unban_user", "user_guid": alice.guid})

    assert await alice_tab.receive() == {"type": "user_unbanned", "guid": alice.guid}


async def test_worker_update_offers_the_pool_aliases(alice, fake_server, register_worker, connect):
    await sync_to_async(register_worker)(fake_server, "openai", "chat", name="gpu1")
    alice_tab = await connect(alice.guid)

    await sync_to_async(pools.create_pool)("$FAST", query_type="chat", members=["gpu1"])
    update = await alice_tab.receive()

    assert update["type"] == "worker_update"
    assert update["pools"] == [{"name": "$FAST", "query_type": "chat", "realm": "", "strategy": "auto"}]


async def test_previous_queries_name_the_worker_that_answered(alice, fake_server, register_worker, rq_worker, connect):
    await sync_to_async(register_worker)(fake_server, "openai", "chat", name="gpu1")
    client = await connect(alice.guid)
    await client.send({"type": "submit_query", "query": {"prompt": "hi", "query_type": "chat"}})
    await client.receive_until("query_result", timeout=30)

    await client.send({"type": "get_previous_queries"})
    history = (await client.receive_until("previous_queries"))[-1]["data"]

    assert [(entry["status"], entry["worker"]) for entry in history] == [("done", "gpu1")]


async def test_terminate_stops_the_running_model_call_and_tells_the_user(sysop, alice, fake_servers, register_worker, start_worker, connect):
    hanging = fake_servers(hang=True)
    await sync_to_async(register_worker)(hanging, "openai", "chat", name="stuck")
    await sync_to_async(start_worker)("--concurrency", "16", "--shutdown-grace", "5")
    alice_tab = await connect(alice.guid)
    sysop_tab = await connect(sysop.guid)
    await alice_tab.send({"type": "submit_query", "query": {"prompt": "never answered", "query_type": "chat"}})
    query_id = (await alice_tab.receive_until("queue_update"))[-1]["query_id"]
    await wait_for(lambda: hanging.stats()["in_flight"] == 1)

    await sysop_tab.send({"type": "terminate_query", "user_guid": alice.guid})

    frames = await alice_tab.receive_until("query_terminated", timeout=15)
    assert {"type": "error", "code": "query_failed", "message": "Query failed: terminated by the sysop", "query_id": query_id} in frames
    assert frames[-1] == {"type": "query_terminated", "guid": alice.guid, "query_ids": [query_id]}
    assert await sysop_tab.receive_until("query_terminated")
    await wait_for(lambda: hanging.stats()["in_flight"] == 0)
    await wait_for(lambda: Job.fetch(query_id, connection=redis_connection()).get_status() == "stopped")
    query = await sync_to_async(Query.objects.get)(pk=query_id)
    assert (query.status, query.cost) == ("failed", 0)


async def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await sync_to_async(condition)():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.1)
