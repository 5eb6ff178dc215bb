"""Bad frames on /ws: each gets an `error` naming the problem, the socket stays usable, and
nothing is written half-way."""
import pytest
from asgiref.sync import sync_to_async

from accounts.models import Query

pytestmark = pytest.mark.django_db(transaction=True)


async def assert_still_usable(client) -> None:
    await client.send({"type": "get_previous_queries"})
    assert (await client.receive())["type"] == "previous_queries"


async def assert_nothing_written() -> None:
    assert await sync_to_async(Query.objects.count)() == 0


def query(**fields) -> dict:
    return {"type": "submit_query", "query": {"prompt": "hi", "query_type": "chat", "model_type": "worker_node", "model_name": "", **fields}}


@pytest.mark.parametrize(
    ("raw", "code", "message"),
    [
        ("{not json", "malformed", "Malformed JSON"),
        ("[1, 2]", "bad_frame", "JSON object with a string 'type'"),
        ('{"type": 7}', "bad_frame", "JSON object with a string 'type'"),
        ('{"type": "launch_missiles"}', "unknown_frame_type", "Unknown frame type 'launch_missiles'"),
        ('{"type": "submit_query"}', "bad_field", "Field 'query' must be an object"),
        ('{"type": "submit_query", "query": {"query_type": "chat"}}', "missing_field", "Missing field 'prompt'"),
        ('{"type": "submit_query", "query": {"prompt": "hi"}}', "missing_field", "Missing field 'query_type'"),
        ('{"type": "submit_query", "query": {"prompt": 5, "query_type": "chat"}}', "bad_field", "Field 'prompt' must be a string"),
        ('{"type": "submit_query", "query": {"prompt": "hi", "query_type": "telepathy"}}', "unknown_query_type", "Unknown query type 'telepathy'"),
        ('{"type": "submit_query", "query": {"prompt": "hi", "query_type": "chat", "model_type": "oracle"}}', "unknown_model_type", "Unknown model type 'oracle'"),
        ('{"type": "submit_query", "query": {"prompt": "what is this", "query_type": "vision"}}', "missing_field", "A vision query needs an 'image'"),
        ('{"type": "submit_query", "query": {"prompt": "x", "query_type": "vision", "image": "@@not base64@@"}}', "bad_field", "not valid base64"),
        ('{"type": "set_nickname"}', "missing_field", "Missing field 'nickname'"),
        ('{"type": "submit_query", "query": {"prompt": "hi\\u0000there", "query_type": "chat"}}', "bad_field", "Field 'prompt' must not contain NUL"),
        ('{"type": "submit_query", "query": {"prompt": "hi", "query_type": "chat", "model_name": "m\\u0000"}}', "bad_field", "Field 'model_name' must not contain NUL"),
        ('{"type": "set_nickname", "nickname": "eve\\u0000"}', "bad_field", "Field 'nickname' must not contain NUL"),
    ],
)
async def test_bad_frame_gets_error_naming_the_problem(raw, code, message, alice, default_realms, connect):
    client = await connect(alice.guid)

    await client.send_text(raw)
    error = await client.receive()

    assert (error["type"], error["code"]) == ("error", code)
    assert message in error["message"]
    await assert_still_usable(client)
    await assert_nothing_written()


async def test_prompt_over_the_limit_is_refused(alice, default_realms, connect, settings):
    settings.RENTAHAL_MAX_PROMPT_CHARS = 100
    client = await connect(alice.guid)

    await client.send(query(prompt="x" * 101))
    error = await client.receive()

    assert error == {"type": "error", "code": "prompt_too_long", "message": "Prompt is 101 characters; the limit is 100."}
    await assert_still_usable(client)
    await assert_nothing_written()


async def test_frame_over_the_size_limit_is_refused(alice, default_realms, connect, settings):
    settings.RENTAHAL_MAX_FRAME_BYTES = 1000
    client = await connect(alice.guid)

    await client.send(query(prompt="x" * 2000))
    error = await client.receive()

    assert (error["type"], error["code"]) == ("error", "frame_too_large")
    assert "over the 1000-byte limit" in error["message"]
    await assert_still_usable(client)
    await assert_nothing_written()


async def test_query_for_a_type_with_no_realm_is_refused(alice, db, connect):
    client = await connect(alice.guid)

    await client.send(query())
    error = await client.receive()

    assert error == {"type": "error", "code": "no_realm", "message": "No realm serves chat queries."}
    await assert_nothing_written()


async def test_full_realm_refuses_new_queries(alice, default_realms, connect):
    chat_realm = default_realms["chat"]
    chat_realm.queue_limit = 1
    await sync_to_async(chat_realm.save)()
    client = await connect(alice.guid)
    await client.send(query(prompt="first"))
    assert (await client.receive())["type"] == "queue_update"

    await client.send(query(prompt="second"))
    error = await client.receive()

    assert error["type"] == "error"
    assert "The $CHAT realm is full" in error["message"]
    assert await sync_to_async(Query.objects.count)() == 1
