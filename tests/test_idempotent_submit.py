"""Idempotent submit: a `submit_query` carrying an `idempotency_key` the user already used
within a day is answered with that query, never run or charged a second time
(docs/protocol.md §1)."""
import datetime
import threading

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.utils import timezone

from accounts.actions import queries
from accounts.models import Charge, Query
from realms import lifecycle
from realms.frames import QuerySubmission

pytestmark = pytest.mark.django_db(transaction=True)


def chat(prompt: str, *, key: str) -> dict:
    return {
        "type": "submit_query",
        "idempotency_key": key,
        "query": {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": ""},
    }


def submission(prompt: str, *, key: str) -> QuerySubmission:
    return QuerySubmission(
        prompt=prompt, query_type="chat", model_type="worker_node", model_name="", image="", idempotency_key=key
    )


def count_queries_and_charges(guid: str) -> tuple[int, int]:
    return Query.objects.filter(user_id=guid).count(), Charge.objects.filter(user_id=guid).count()


async def test_resubmitting_while_the_query_runs_returns_its_queue_update_again(
    start_worker, fake_servers, register_worker, alice, connect
):
    await sync_to_async(register_worker)(fake_servers(delay=1.0), "openai")
    await sync_to_async(start_worker)("--concurrency", "4")
    client = await connect(alice.guid)

    await client.send(chat("only once", key="tab-1-query-1"))
    first = (await client.receive_until("queue_update"))[-1]
    await client.send(chat("only once", key="tab-1-query-1"))
    again = (await client.receive_until("queue_update"))[-1]
    result = (await client.receive_until("query_result"))[-1]

    assert again["query_id"] == first["query_id"] == result["query_id"]
    assert await sync_to_async(count_queries_and_charges)(alice.guid) == (1, 1)


async def test_resubmitting_a_finished_query_returns_its_result_and_charges_once(
    start_worker, fake_server, register_worker, alice, connect
):
    await sync_to_async(register_worker)(fake_server, "openai")
    await sync_to_async(start_worker)("--concurrency", "4")
    client = await connect(alice.guid)
    await client.send(chat("answered already", key="k-42"))
    answered = (await client.receive_until("query_result"))[-1]

    await client.send(chat("answered already", key="k-42"))
    again = await client.receive()

    assert again == answered
    assert await sync_to_async(count_queries_and_charges)(alice.guid) == (1, 1)


async def test_resubmitting_after_the_socket_dropped_is_one_query_and_one_charge(
    start_worker, fake_server, register_worker, alice, connect
):
    await sync_to_async(register_worker)(fake_server, "openai")
    await sync_to_async(start_worker)("--concurrency", "4")
    dropped = await connect(alice.guid)
    await dropped.send(chat("did it arrive?", key="retry-me"))
    await dropped.close()

    retry = await connect(alice.guid)
    await retry.send(chat("did it arrive?", key="retry-me"))
    reply = await retry.receive()
    if reply["type"] == "queue_update":
        result = (await retry.receive_until("query_result"))[-1]
        assert result["query_id"] == reply["query_id"]
    else:
        assert reply["type"] == "query_result"

    assert await sync_to_async(count_queries_and_charges)(alice.guid) == (1, 1)


def test_concurrent_submits_with_one_key_make_one_query(default_realms, alice):
    answers = []

    def submit():
        try:
            answers.append(lifecycle.accept_query(alice.guid, submission("racing", key="same"))["query_id"])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(answers) == 8 and len(set(answers)) == 1
    assert Query.objects.filter(user_id=alice.guid).count() == 1


def test_a_key_older_than_a_day_starts_a_new_query(default_realms, alice):
    first = lifecycle.accept_query(alice.guid, submission("yesterday", key="daily"))["query_id"]
    Query.objects.filter(pk=first).update(accepted_at=timezone.now() - datetime.timedelta(hours=25))

    second = lifecycle.accept_query(alice.guid, submission("today", key="daily"))["query_id"]

    assert second != first
    assert Query.objects.get(pk=second).prompt == "today"


def test_the_same_key_from_two_users_names_two_queries(default_realms, alice, bob):
    mine = lifecycle.accept_query(alice.guid, submission("alice's", key="1"))["query_id"]
    theirs = lifecycle.accept_query(bob.guid, submission("bob's", key="1"))["query_id"]

    assert mine != theirs
    assert Query.objects.get(pk=theirs).user_id == bob.guid


def test_a_resubmit_of_a_failed_query_returns_its_failure(default_realms, alice):
    query_id = lifecycle.accept_query(alice.guid, submission("doomed", key="f"))["query_id"]
    queries.fail_queries([queries.Failure(query_id, "no worker")])

    frame = lifecycle.accept_query(alice.guid, submission("doomed", key="f"))

    assert frame == {"type": "error", "code": "query_failed", "message": "Query failed: no worker", "query_id": query_id}
