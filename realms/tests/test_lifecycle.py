"""A query's life, step by step (`realms.lifecycle`): what its row, its job, its ledger and
its user's sockets show after each of accept, start, serve, and finish or fail."""
import pytest
from asgiref.sync import sync_to_async
from rq.job import Job

from accounts.models import Charge, Query
from pools.selection import NoWorkerAvailable
from realms import lifecycle
from realms.frames import QuerySubmission
from rentahal.queues import get_queue

pytestmark = pytest.mark.django_db(transaction=True)


def chat(prompt: str) -> QuerySubmission:
    return QuerySubmission(prompt=prompt, query_type="chat", model_type="worker_node", model_name="", image="")


@sync_to_async
def status_of(query_id: str) -> str:
    return Query.objects.get(pk=query_id).status


@sync_to_async
def ledger_of(query_id: str) -> list:
    return list(Charge.objects.filter(query_id=query_id).values_list("amount", flat=True))


async def test_an_answered_query_goes_accepted_running_done_and_is_charged_once(
    default_realms, fake_server, register_worker, alice, connect
):
    await sync_to_async(register_worker)(fake_server, "openai")
    client = await connect(alice.guid)

    ticket = await sync_to_async(lifecycle.accept_query)(alice.guid, chat("hello"))
    query_id = ticket["query_id"]
    statuses = [await status_of(query_id)]
    query = await lifecycle.start_query(query_id)
    statuses.append(await status_of(query_id))
    served = await lifecycle.serve_query(query)
    await lifecycle.finish_query(query, served, busy_seconds=0.0)
    statuses.append(await status_of(query_id))
    result = (await client.receive_until("query_result"))[-1]

    assert statuses == [Query.Status.ACCEPTED, Query.Status.RUNNING, Query.Status.DONE]
    assert (ticket["type"], ticket["realm"], ticket["total"]) == ("queue_update", "$CHAT", 1)
    assert (result["query_id"], result["result"]) == (query_id, "echo: hello")
    stored = await sync_to_async(Query.objects.get)(pk=query_id)
    assert await ledger_of(query_id) == [stored.cost]
    assert result["cost"] == float(stored.cost)


async def test_an_accepted_query_waits_on_its_realms_queue_as_a_job_named_by_its_id(default_realms, alice):
    ticket = await sync_to_async(lifecycle.accept_query)(alice.guid, chat("queued"))

    queue = get_queue("realm.chat")
    job = await sync_to_async(Job.fetch)(ticket["query_id"], connection=queue.connection)

    assert queue.job_ids == [ticket["query_id"]]
    assert (job.get_status(), job.args) == ("queued", (ticket["query_id"],))


async def test_a_query_no_worker_serves_goes_accepted_running_failed_and_is_not_charged(default_realms, alice, connect):
    client = await connect(alice.guid)

    ticket = await sync_to_async(lifecycle.accept_query)(alice.guid, chat("anyone there?"))
    query_id = ticket["query_id"]
    statuses = [await status_of(query_id)]
    query = await lifecycle.start_query(query_id)
    statuses.append(await status_of(query_id))
    with pytest.raises(NoWorkerAvailable) as refusal:
        await lifecycle.serve_query(query)
    await lifecycle.fail_query(query_id, str(refusal.value))
    statuses.append(await status_of(query_id))
    error = (await client.receive_until("error"))[-1]

    assert statuses == [Query.Status.ACCEPTED, Query.Status.RUNNING, Query.Status.FAILED]
    assert error == {"type": "error", "code": "query_failed", "message": f"Query failed: {refusal.value}", "query_id": query_id}
    assert await ledger_of(query_id) == []


async def test_a_finished_query_is_neither_failed_nor_answered_again(default_realms, fake_server, register_worker, alice):
    await sync_to_async(register_worker)(fake_server, "openai")
    ticket = await sync_to_async(lifecycle.accept_query)(alice.guid, chat("once"))
    query_id = ticket["query_id"]
    assert await lifecycle.run_query(query_id) == "done"

    failed = await lifecycle.fail_query(query_id, "too late")
    rerun = await lifecycle.run_query(query_id)

    stored = await sync_to_async(Query.objects.get)(pk=query_id)
    assert (failed, rerun) == (None, "already finished")
    assert (stored.status, stored.result, stored.error) == (Query.Status.DONE, "echo: once", "")
    assert await ledger_of(query_id) == [stored.cost]


async def test_the_sysop_terminating_a_users_queries_fails_them_with_a_reason_the_user_sees(
    default_realms, alice, sysop, connect
):
    user_socket = await connect(alice.guid)
    sysop_socket = await connect(sysop.guid)
    ticket = await sync_to_async(lifecycle.accept_query)(alice.guid, chat("never mind"))
    query_id = ticket["query_id"]

    await sysop_socket.send({"type": "terminate_query", "user_guid": alice.guid})
    acknowledged = (await sysop_socket.receive_until("query_terminated"))[-1]
    error = (await user_socket.receive_until("error"))[-1]

    assert acknowledged == {"type": "query_terminated", "guid": alice.guid}
    assert error == {"type": "error", "code": "query_failed", "message": "Query failed: terminated by the sysop", "query_id": query_id}
    assert await status_of(query_id) == Query.Status.FAILED
    assert get_queue("realm.chat").job_ids == []
    assert await ledger_of(query_id) == []
