"""`run_broker` as a supervisor (README, "What runs"): a realm worker that lives but is stuck
is killed and replaced and its query is run again; no child outlives a `kill -9` of its
parent, whether that is a realm worker or the supervisor itself."""
import asyncio
import os
import signal
import time

import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.core.checks import run_checks
from rq import Worker as RQWorker

from accounts.models import Charge, Query
from pools import actions as pools
from realms.models import Realm
from rentahal.queues import get_queue, redis_connection
from tests.test_live_broker import read_until, start_broker

pytestmark = pytest.mark.django_db(transaction=True)

STUCK_SECONDS = 8
# Freezing, being found stuck, a new worker's start and the job's rerun, with room for a loaded box.
RECOVERY_TIMEOUT = 90


def process_table() -> dict[int, tuple[int, str]]:
    """Return every process's parent pid and state (R, S, Z, ...), read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), fields[0])
    return table


def descendants(root: int) -> set[int]:
    table = process_table()
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (parent, _state) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids) -> set[int]:
    """Return those of `pids` that are still running (a zombie has ended)."""
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid][1] not in ("Z", "X")}


def wait_until(condition, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, message
        time.sleep(0.2)
    return result


def realm_worker_pids(queue_name: str) -> set[int]:
    """Return the pids of the live RQ workers of the queue, as `rq info` lists them."""
    return running(worker.pid for worker in RQWorker.all(queue=get_queue(queue_name), connection=redis_connection()))


def all_realm_workers_up() -> bool:
    return all(realm_worker_pids(realm.queue_name) for realm in Realm.objects.all())


@pytest.fixture
def supervised(transactional_db, default_realms):
    """Start run_broker (without the bundled model) with the given environment; stop it after the test."""
    started = []

    def start(**env):
        process, port = start_broker("--no-local-model", env=env)
        started.append(process)
        wait_until(all_realm_workers_up, 60, "the realm workers did not all start")
        return process, port

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


async def test_a_frozen_realm_worker_is_replaced_and_its_query_in_flight_ends_done_once(
    supervised, fake_servers, register_worker
):
    server = fake_servers(delay=3.0)
    worker = await sync_to_async(register_worker)(server, "openai", "chat")
    await sync_to_async(pools.ensure_pool)("$CHAT", query_type="chat", realm="$CHAT", members=[worker.name], acting_user=None)
    _process, port = await asyncio.to_thread(
        supervised, WORKER_STUCK_SECONDS=str(STUCK_SECONDS), RECONCILE_EVERY_SECONDS="1"
    )
    [frozen] = await sync_to_async(realm_worker_pids)("realm.chat")
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await read_until(ws, "huggingface_update")
        await ws.send(orjson.dumps({"type": "submit_query", "query": {"prompt": "frozen", "query_type": "chat"}}).decode())
        query_id = (await read_until(ws, "queue_update"))["query_id"]
        await asyncio.to_thread(
            wait_until, lambda: Query.objects.get(pk=query_id).status == Query.Status.RUNNING, 30, "it never started"
        )

        os.kill(frozen, signal.SIGSTOP)
        result = await read_until(ws, "query_result", timeout=RECOVERY_TIMEOUT)
        await asyncio.sleep(2)
        later = []
        while True:
            try:
                later.append(orjson.loads(await asyncio.wait_for(ws.recv(), 0.1)))
            except TimeoutError:
                break

    assert (result["query_id"], result["result"]) == (query_id, "echo: frozen")
    assert [frame for frame in later if frame["type"] in ("query_result", "error")] == []
    assert await sync_to_async(lambda: Query.objects.get(pk=query_id).status)() == Query.Status.DONE
    assert await sync_to_async(Charge.objects.filter(query_id=query_id).count)() == 1
    assert frozen not in running([frozen])
    assert await sync_to_async(realm_worker_pids)("realm.chat") - {frozen}


def test_a_realm_worker_killed_with_sigkill_leaves_no_child_behind_and_is_replaced(supervised):
    supervised()
    [victim] = realm_worker_pids("realm.chat")
    # RQ's scheduler, which the worker forks.
    children = wait_until(lambda: descendants(victim), 30, "the realm worker started no scheduler")

    os.kill(victim, signal.SIGKILL)

    wait_until(lambda: not running(children), 20, f"children {running(children)} of the killed worker live on")
    wait_until(lambda: realm_worker_pids("realm.chat") - {victim}, 60, "no realm worker replaced the killed one")


def test_killing_the_supervisor_leaves_no_child_running(supervised):
    process, _port = supervised()
    tree = descendants(process.pid)
    grandchildren = tree - {pid for pid, (parent, _state) in process_table().items() if parent == process.pid}
    assert grandchildren, "the realm workers forked no scheduler"

    process.kill()
    process.wait()

    wait_until(lambda: not running(tree), 20, f"{len(running(tree))} of the supervisor's {len(tree)} descendants live on")


def test_the_checks_warn_of_a_stuck_time_that_a_late_heartbeat_reaches(settings):
    settings.RENTAHAL_WORKER_HEARTBEAT = 5
    settings.RENTAHAL_WORKER_STUCK_SECONDS = 15

    assert "rentahal.W003" in [message.id for message in run_checks()]
