"""Fair share (README.md, Fair share): per-user caps refuse with `too_many_queries` and a
retry hint and hold under concurrent submits; a flooding user cannot push another user's
query to the back; a hanging model server holds only its own cap of a realm worker's slots."""
import asyncio
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

from accounts.actions import queries
from accounts.models import Query
from pools import state
from rentahal.errors import TooManyQueries
from rentahal.sharding import new_query_id, shard_for_guid

pytestmark = pytest.mark.django_db(transaction=True)


def chat(prompt: str, model_name: str = "") -> dict:
    return {
        "type": "submit_query",
        "query": {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": model_name},
    }


async def reply_to_submit(client) -> dict:
    """Return the next answer to a submit (its `queue_update` or refusal), skipping the
    pushes of earlier queries' chunks and results."""
    while True:
        frame = await client.receive(timeout=30)
        if frame["type"] in ("queue_update", "error"):
            return frame


def accept(guid: str, prompt: str) -> Query:
    return queries.accept_query(
        guid, query_type="chat", prompt=prompt, model_type="worker_node", model_name="", image="", realm="$CHAT"
    )


async def test_a_user_at_the_queued_cap_is_refused_with_a_code_and_a_retry_hint(default_realms, alice, connect, settings):
    settings.RENTAHAL_MAX_QUERIES_PER_USER_QUEUED = 3
    settings.RENTAHAL_TOO_MANY_QUERIES_RETRY_AFTER = 1.5
    client = await connect(alice.guid)

    for number in range(3):
        await client.send(chat(f"waiting {number}"))
        assert (await client.receive())["type"] == "queue_update"
    await client.send(chat("one too many"))
    refusal = await client.receive()

    assert (refusal["type"], refusal["code"], refusal["retry_after"]) == ("error", "too_many_queries", 1.5)
    assert "waiting for a worker" in refusal["message"]


def test_a_user_at_the_in_flight_cap_is_refused_although_nothing_is_queued(default_realms, alice, settings):
    settings.RENTAHAL_MAX_QUERIES_PER_USER_IN_FLIGHT = 2
    queries.start_queries([accept(alice.guid, "served now").pk, accept(alice.guid, "served too").pk])

    with pytest.raises(TooManyQueries) as refused:
        accept(alice.guid, "a third")

    assert "not yet answered" in refused.value.message


def test_a_finished_query_frees_its_users_slot(default_realms, alice, settings):
    settings.RENTAHAL_MAX_QUERIES_PER_USER_IN_FLIGHT = 1
    first = accept(alice.guid, "first")
    queries.fail_queries([queries.Failure(first.pk, "gone")])

    assert accept(alice.guid, "second").prompt == "second"


def test_a_slot_freed_between_held_ones_is_taken_again_and_the_cap_still_holds(default_realms, alice, settings):
    settings.RENTAHAL_MAX_QUERIES_PER_USER_IN_FLIGHT = 3
    settings.RENTAHAL_MAX_QUERIES_PER_USER_QUEUED = 3
    first, middle, last = accept(alice.guid, "first"), accept(alice.guid, "middle"), accept(alice.guid, "last")
    queries.fail_queries([queries.Failure(middle.pk, "gone")])

    again = accept(alice.guid, "in the freed slot")
    with pytest.raises(TooManyQueries):
        accept(alice.guid, "one too many")

    assert sorted(Query.objects.filter(user_id=alice.guid, status=Query.Status.ACCEPTED).values_list("prompt", flat=True)) == [
        "first", "in the freed slot", "last"]
    assert again.prompt == "in the freed slot"


def submit_at_once(guid: str, count: int) -> tuple[list, list[str]]:
    """Submit `count` queries of the user from as many threads at once; return the accepted
    queries and the codes of the refusals."""
    accepted, refused = [], []
    go = threading.Barrier(count)

    def submit(number: int):
        go.wait()
        try:
            accepted.append(accept(guid, f"at once {number}"))
        except TooManyQueries as exc:
            refused.append(exc.code)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=submit, args=(number,)) for number in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return accepted, refused


def test_the_caps_hold_under_concurrent_submits(default_realms, alice, settings):
    settings.RENTAHAL_MAX_QUERIES_PER_USER_QUEUED = 5

    accepted, refused = submit_at_once(alice.guid, 16)

    assert (len(accepted), refused) == (5, ["too_many_queries"] * 11)
    assert Query.objects.filter(user_id=alice.guid).count() == 5


def test_concurrent_submits_under_the_caps_are_all_accepted_each_in_a_slot_of_its_own(default_realms, alice):
    accepted, refused = submit_at_once(alice.guid, 16)

    stored = Query.objects.filter(user_id=alice.guid)
    assert (len(accepted), refused) == (16, [])
    assert sorted(stored.values_list("in_flight_slot", flat=True)) == list(range(16))
    assert sorted(stored.values_list("queued_slot", flat=True)) == list(range(16))


def test_an_accept_that_loses_its_slot_to_a_concurrent_one_takes_the_next_without_the_refusal_checks(
    default_realms, alice
):
    alias = shard_for_guid(alice.guid)
    accepted, statements = [], []

    def accept_second():
        with CaptureQueriesContext(connections[alias]) as captured:
            accepted.append(accept(alice.guid, "second"))
        statements.extend(captured.captured_queries)
        connections.close_all()

    # A concurrent accept holds slot 0, not yet committed: the second reads 0 as free, waits
    # on the slot's unique index, and finds it taken once the first commits.
    with transaction.atomic(using=alias):
        first = Query(id=new_query_id(alice.guid), user_id=alice.guid, query_type="chat", prompt="first", realm="$CHAT")
        assert queries.insert_if_user_may_query(first, using=alias) is queries.Insert.DONE
        second = threading.Thread(target=accept_second)
        second.start()
        wait_until_an_accept_waits_for_a_lock(alias)
    second.join(timeout=10)

    assert [query.in_flight_slot for query in Query.objects.filter(user_id=alice.guid).order_by("prompt")] == [0, 1]
    assert len(accepted) == 1
    # Two tries of the accept's one statement, and no read of the user or their queries between.
    assert len(statements) == 2


def wait_until_an_accept_waits_for_a_lock(alias: str) -> None:
    deadline = time.monotonic() + 10
    with connections[alias].cursor() as cursor:
        while time.monotonic() < deadline:
            # Inside a transaction the activity view is read once, unless its snapshot is cleared.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                ["%WITH candidate%"],
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError("the second accept never waited on the first's slot")


def finished_while_waiting(flooder: str, query_id: str) -> int:
    """Return how many of the flooder's queries finished while `query_id` waited (from its
    acceptance to its answer): how far back the flood put it."""
    query = Query.objects.get(pk=query_id)
    return Query.objects.filter(
        user_id=flooder, finished_at__gt=query.accepted_at, finished_at__lt=query.finished_at
    ).count()


async def test_a_flooding_user_does_not_push_another_users_query_behind_the_flood(
    start_worker, fake_servers, register_worker, alice, bob, connect, settings
):
    settings.RENTAHAL_MAX_QUERIES_PER_USER_QUEUED = 10
    settings.RENTAHAL_MAX_QUERIES_PER_USER_IN_FLIGHT = 20
    await sync_to_async(register_worker)(fake_servers(delay=0.1), "openai")
    await sync_to_async(start_worker)("--concurrency", "2", "$CHAT")
    flooder, other = await connect(alice.guid), await connect(bob.guid)
    bob_answered = asyncio.Event()

    async def flood():
        """A burst of 300 at once, then one more every 50 ms until bob is answered."""
        for number in range(300):
            await flooder.send(chat(f"flood {number}"))
        for _ in range(300):
            await reply_to_submit(flooder)
        while not bob_answered.is_set():
            await flooder.send(chat("more flood"))
            await reply_to_submit(flooder)
            await asyncio.sleep(0.05)

    flooding = asyncio.create_task(flood())
    while await sync_to_async(Query.objects.filter(user_id=alice.guid).count)() < 20:
        await asyncio.sleep(0.05)
    await other.send(chat("my turn?"))
    bobs_id = (await other.receive_until("queue_update"))[-1]["query_id"]
    result = (await other.receive_until("query_result", timeout=60))[-1]
    flood_still_waiting = await sync_to_async(
        Query.objects.filter(user_id=alice.guid, status__in=Query.UNFINISHED).count
    )()
    bob_answered.set()
    await flooding

    assert result["query_id"] == bobs_id
    assert flood_still_waiting > 0
    # Behind at most the flooder's in-flight cap, plus one query in the worker's other slot.
    assert await sync_to_async(finished_while_waiting)(alice.guid, bobs_id) <= 20 + 1


async def test_a_hanging_server_holds_only_its_own_cap_of_the_realm_workers_slots(
    start_worker, fake_servers, register_worker, alice, bob, connect, monkeypatch
):
    monkeypatch.setenv("DEFAULT_WORKER_CONCURRENCY", "2")
    monkeypatch.setenv("BUSY_WAIT_SECONDS", "0.5")
    monkeypatch.setenv("MODEL_READ_TIMEOUT", "20")
    hanging = await sync_to_async(register_worker)(fake_servers(hang=True), "openai", name="hanging")
    healthy = await sync_to_async(register_worker)(fake_servers(), "openai", name="healthy")
    await sync_to_async(start_worker)("--concurrency", "8", "--shutdown-grace", "1", "$CHAT")
    stuck, other = await connect(alice.guid), await connect(bob.guid)
    for number in range(8):
        await stuck.send(chat(f"hello? {number}", model_name=hanging.name))
        await stuck.receive_until("queue_update")

    await other.send(chat("anyone healthy?", model_name=healthy.name))
    result = (await other.receive_until("query_result", timeout=15))[-1]

    assert result["worker"] == healthy.name
    assert await sync_to_async(state.in_flight)(hanging.name) == 2
    assert await sync_to_async(Query.objects.filter(user_id=alice.guid, status=Query.Status.RUNNING).count)() >= 2
