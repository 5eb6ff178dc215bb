"""The `latency` strategy fed by real model calls: each answer's time to first byte goes into
its member's average (in Redis, shared by every worker process), and when one member slows
down the pool sends its queries to the other."""
import pytest
from asgiref.sync import sync_to_async

from pools import actions as pools
from pools import state

pytestmark = pytest.mark.django_db(transaction=True)

SLOW_SECONDS = 1.0


async def ask(client, prompt: str) -> str:
    await client.send({"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat", "model_name": "$CHAT"}})
    return (await client.receive_until("query_result", timeout=60))[-1]["worker"]


async def test_a_member_that_slows_down_stops_being_chosen(fake_servers, register_worker, start_worker, alice, connect):
    quick, slowing = fake_servers(), fake_servers()
    await sync_to_async(register_worker)(quick, "openai", name="quick")
    await sync_to_async(register_worker)(slowing, "openai", name="slowing")
    await sync_to_async(pools.create_pool)("$CHAT", query_type="chat", members=["quick", "slowing"], strategy="latency")
    await sync_to_async(start_worker)("--concurrency", "4")
    client = await connect(alice.guid)
    served = [await ask(client, f"warm up {number}") for number in range(6)]
    assert set(served) == {"quick", "slowing"}, "each member answers while neither has an average"

    slowing.configure(delay=SLOW_SECONDS)
    # Until the slowed member is chosen again (by its average or by exploration), its average is old.
    for _ in range(100):
        if await ask(client, "find the slow one") == "slowing":
            break
    averages = await sync_to_async(state.member_views)(["quick", "slowing"])
    later = [await ask(client, f"after {number}") for number in range(10)]

    assert averages["slowing"]["latency"] > averages["quick"]["latency"] * 2
    assert later.count("quick") >= 8
