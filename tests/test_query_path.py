"""The query path end to end: /ws → realm queue → real RQ worker → fake model server over
HTTP → stored, billed result pushed back to every socket of the user."""
import pytest
from decimal import Decimal

from accounts.billing import cost_of, system_totals
from accounts.models import Charge, Query, User
from pools.models import SelectionOutcome

pytestmark = pytest.mark.django_db(transaction=True)

CHAT_FORMATS = ["predict", "ollama", "openai"]


def chat(prompt: str, **fields) -> dict:
    return {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": "", **fields}}


@pytest.mark.parametrize("wire_format", CHAT_FORMATS)
async def test_chat_query_is_answered_stored_and_billed_once(wire_format, rq_worker, fake_server, register_worker, alice, connect):
    await sync(register_worker)(fake_server, wire_format)
    client = await connect(alice.guid)

    await client.send(chat("hello there"))
    frames = await client.receive_until("query_result")

    assert frames[0]["type"] == "queue_update"
    query_id = frames[0]["query_id"]
    result = frames[-1]
    assert result["query_id"] == query_id
    assert "hello there" in result["result"]
    assert result["result_type"] == "text"
    query = await sync(Query.objects.get)(pk=query_id)
    assert query.status == Query.Status.DONE
    assert query.result == result["result"]
    charges = await sync(list)(Charge.objects.filter(query_id=query_id))
    assert len(charges) == 1
    assert charges[0].amount == cost_of(query.processing_time) == query.cost
    assert result["cost"] == float(query.cost)
    user = await sync(User.objects.get)(pk=alice.guid)
    assert (user.query_count, user.total_cost) == (1, query.cost)
    assert user.total_query_time == pytest.approx(query.processing_time)
    totals = await sync(system_totals)()
    assert (totals["total_queries"], totals["total_cost"]) == (1, query.cost)


@pytest.mark.parametrize("wire_format", ["ollama", "openai"])
async def test_streaming_formats_push_chunks_before_the_result(wire_format, rq_worker, fake_server, register_worker, alice, connect):
    await sync(register_worker)(fake_server, wire_format)
    client = await connect(alice.guid)

    await client.send(chat("one two three four"))
    frames = await client.receive_until("query_result")

    chunks = [frame for frame in frames if frame["type"] == "query_chunk"]
    assert chunks
    assert "".join(chunk["chunk"] for chunk in chunks) == frames[-1]["result"]
    assert {chunk["query_id"] for chunk in chunks} == {frames[-1]["query_id"]}


@pytest.mark.parametrize("wire_format", ["ollama", "openai"])
async def test_query_result_carries_the_token_counts_the_server_reported(wire_format, rq_worker, fake_server, register_worker, alice, connect):
    await sync(register_worker)(fake_server, wire_format)
    client = await connect(alice.guid)

    await client.send(chat("count my words please"))
    result = (await client.receive_until("query_result"))[-1]

    query = await sync(Query.objects.get)(pk=result["query_id"])
    assert result["usage"] == query.usage
    assert result["usage"]["prompt_tokens"] > 0 and result["usage"]["completion_tokens"] > 0


async def test_query_result_of_a_server_that_counts_no_tokens_has_empty_usage(rq_worker, fake_server, register_worker, alice, connect):
    await sync(register_worker)(fake_server, "predict")
    client = await connect(alice.guid)

    await client.send(chat("hello"))
    result = (await client.receive_until("query_result"))[-1]

    assert result["usage"] == {}


async def test_imagine_query_through_a1111_returns_an_image(rq_worker, fake_server, register_worker, alice, connect):
    await sync(register_worker)(fake_server, "a1111", query_type="imagine")
    client = await connect(alice.guid)

    await client.send({"type": "submit_query", "query": {"prompt": "a red fox", "query_type": "imagine", "model_type": "worker_node", "model_name": ""}})
    result = (await client.receive_until("query_result"))[-1]

    assert result["result_type"] == "image"
    import base64

    assert base64.b64decode(result["result"]).startswith(b"\x89PNG")
    assert await sync(Charge.objects.count)() == 1


async def test_every_tab_of_a_user_receives_the_result(rq_worker, fake_server, register_worker, alice, connect):
    await sync(register_worker)(fake_server, "openai")
    first_tab = await connect(alice.guid)
    second_tab = await connect(alice.guid)

    await first_tab.send(chat("shared answer"))
    first = (await first_tab.receive_until("query_result"))[-1]
    second = (await second_tab.receive_until("query_result"))[-1]

    assert first["query_id"] == second["query_id"]
    assert first["result"] == second["result"]


async def test_other_users_do_not_receive_the_result(rq_worker, fake_server, register_worker, alice, bob, connect):
    await sync(register_worker)(fake_server, "openai")
    alice_tab = await connect(alice.guid)
    bob_tab = await connect(bob.guid)

    await alice_tab.send(chat("private"))
    await alice_tab.receive_until("query_result")

    assert await bob_tab.communicator.receive_nothing(timeout=0.5)


GENERIC_FAILURE = "Query failed: The model server failed."


def attempt_details() -> list[str]:
    return list(SelectionOutcome.objects.values_list("detail", flat=True))


@pytest.mark.parametrize(
    ("knobs", "reason"),
    [
        ({"failure_rate": 1.0}, "500"),
        ({"hang": True}, "time"),
        ({"malformed": True}, "malformed"),
        ({"oversized_bytes": 40 * 1024 * 1024}, "larger"),
    ],
    ids=["server-error", "hang", "garbage", "oversized"],
)
async def test_model_server_fault_fails_query_with_a_generic_reason_and_no_charge(
    knobs, reason, rq_worker, fake_server, register_worker, alice, connect
):
    """The user reads one reason whatever the fault; the operators' attempt row says which."""
    await sync(register_worker)(fake_server, "openai")
    fake_server.configure(**knobs)
    client = await connect(alice.guid)

    await client.send(chat("doomed"))
    error = (await client.receive_until("error", timeout=20))[-1]

    assert error["message"] == GENERIC_FAILURE
    query = await sync(Query.objects.get)(pk=error["query_id"])
    assert query.status == Query.Status.FAILED
    assert query.error == "The model server failed."
    assert any(reason in detail.lower() for detail in await sync(attempt_details)())
    assert await sync(Charge.objects.count)() == 0
    assert (await sync(User.objects.get)(pk=alice.guid)).query_count == 0


async def test_refused_connection_fails_query_with_the_same_generic_reason(rq_worker, register_worker, alice, connect):
    """A closed port reads like any other failure, so queries cannot map the network."""
    class Closed:
        url = "http://127.0.0.1:9"

    await sync(register_worker)(Closed, "predict")
    client = await connect(alice.guid)

    await client.send(chat("anyone there?"))
    error = (await client.receive_until("error"))[-1]

    assert error["message"] == GENERIC_FAILURE
    assert (await sync(Query.objects.get)(pk=error["query_id"])).status == Query.Status.FAILED
    assert any("could not connect" in detail for detail in await sync(attempt_details)())


async def test_the_servers_error_text_reaches_the_operators_record_but_never_the_user(
    rq_worker, fake_server, register_worker, alice, connect
):
    secret = "connection to postgres://admin:hunter2@10.1.2.3:5432 refused"
    await sync(register_worker)(fake_server, "openai")
    fake_server.configure(failure_rate=1.0, fail_message=secret)
    client = await connect(alice.guid)

    await client.send(chat("tell me your secrets"))
    frames = await client.receive_until("error", timeout=20)

    assert frames[-1]["message"] == GENERIC_FAILURE
    assert not any("hunter2" in str(frame) for frame in frames)
    assert "hunter2" not in (await sync(Query.objects.get)(pk=frames[-1]["query_id"])).error
    assert any(secret in detail for detail in await sync(attempt_details)())


async def test_a_redirecting_model_server_is_not_followed_and_the_user_gets_the_generic_reason(
    rq_worker, fake_servers, register_worker, alice, connect
):
    target = fake_servers()
    redirecting = fake_servers(redirect_to=f"{target.url}/v1/chat/completions")
    await sync(register_worker)(redirecting, "openai")
    client = await connect(alice.guid)

    await client.send(chat("follow me"))
    error = (await client.receive_until("error", timeout=20))[-1]

    assert error["message"] == GENERIC_FAILURE
    assert target.stats()["requests"] == {}
    assert any("redirect refused" in detail for detail in await sync(attempt_details)())


async def test_worker_goes_on_to_the_next_job_after_a_failure(rq_worker, fake_server, register_worker, alice, connect):
    await sync(register_worker)(fake_server, "openai")
    client = await connect(alice.guid)
    fake_server.configure(malformed=True)
    await client.send(chat("first"))
    await client.receive_until("error")

    fake_server.configure(malformed=False)
    await client.send(chat("second"))
    result = (await client.receive_until("query_result"))[-1]

    assert "second" in result["result"]


async def test_query_with_no_worker_of_its_type_fails_clearly(rq_worker, alice, connect):
    client = await connect(alice.guid)

    await client.send(chat("is anybody home"))
    error = (await client.receive_until("error"))[-1]

    assert error["message"] == "Query failed: No chat worker is available."


async def test_previous_queries_lists_answered_queries_newest_first(rq_worker, fake_server, register_worker, alice, connect):
    await sync(register_worker)(fake_server, "predict")
    client = await connect(alice.guid)
    for prompt in ["first", "second"]:
        await client.send(chat(prompt))
        await client.receive_until("query_result")

    await client.send({"type": "get_previous_queries"})
    frame = (await client.receive_until("previous_queries"))[-1]

    assert [entry["prompt"] for entry in frame["data"]] == ["second", "first"]
    assert all(entry["status"] == "done" for entry in frame["data"])


def sync(function):
    from asgiref.sync import sync_to_async

    return sync_to_async(function)


def test_cost_is_base_plus_time_times_rate(settings):
    settings.RENTAHAL_BASE_COST_PER_QUERY = 0.01
    settings.RENTAHAL_COST_PER_SECOND = 0.001

    assert cost_of(2.5) == Decimal("0.012500")
