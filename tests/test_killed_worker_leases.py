"""A realm worker SIGKILLed mid-call leaves no calls counted against the model server's cap
for longer than three heartbeats (found by the chaos suite: its leases lived as long as the
longest call could, so the server looked full for minutes and every query to it failed as
busy while it sat idle)."""
import asyncio
import os
import signal
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from conftest import WORKER_KINDS
from pools import state
from tests.test_recovery import submit, wait_until_running

pytestmark = pytest.mark.django_db(transaction=True)

# Three heartbeats after the kill, and a margin for a loaded machine.
LEASE_GONE_WITHIN_SECONDS = 3 * settings.RENTAHAL_WORKER_HEARTBEAT + 10


async def test_a_killed_workers_calls_stop_filling_the_model_servers_cap_and_new_queries_are_served(
    start_worker, fake_servers, register_worker, alice, bob, connect
):
    server = fake_servers(delay=60.0)
    worker = await sync_to_async(register_worker)(server, "openai", max_concurrency=2)
    victim = await asyncio.to_thread(start_worker, *WORKER_KINDS["concurrent"])
    held = await connect(alice.guid)
    await wait_until_running([await submit(held, f"held {number}") for number in range(2)])
    while server.stats()["in_flight"] < 2:
        await asyncio.sleep(0.05)

    os.killpg(victim.pid, signal.SIGKILL)
    await asyncio.to_thread(victim.wait)
    server.configure(delay=0.0)
    killed_at = time.monotonic()
    while await sync_to_async(state.in_flight)(worker.name):
        assert time.monotonic() - killed_at < LEASE_GONE_WITHIN_SECONDS, "the dead worker's calls still fill the server's cap"
        await asyncio.sleep(0.2)
    await asyncio.to_thread(start_worker, *WORKER_KINDS["concurrent"])
    client = await connect(bob.guid)
    query_id = await submit(client, "after the kill")
    frames = await client.receive_until("query_result", timeout=30)

    assert (frames[-1]["query_id"], frames[-1]["result"]) == (query_id, "echo: after the kill")
