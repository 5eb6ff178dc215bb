"""Staff and agents follow pools, workers and queries on /ws/events: the actions' events,
in order, filtered per subscriber, and a subscriber that falls behind is dropped."""
import pytest
from asgiref.sync import sync_to_async as sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from rest_framework.authtoken.models import Token

from conftest import make_staff
from pools import actions as pools
from pools.models import PoolAlias
from rentahal.pushes import QUERY_EVENTS

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_token(db):
    return Token.objects.create(user=make_staff("agent")).key


@pytest.fixture
async def stream():
    """Open /ws/events with a token (or none); every socket is closed after the test."""
    from rentahal.asgi import application

    opened = []

    async def open_stream(token: str | None, *, refused: bool = False, **subscription):
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        communicator = WebsocketCommunicator(application, "/ws/events", headers=headers)
        connected, _ = await communicator.connect()
        assert connected
        opened.append(communicator)
        if not refused:
            await communicator.send_json_to({"type": "subscribe", **subscription})
            assert (await communicator.receive_json_from())["type"] == "subscribed"
        return communicator

    yield open_stream
    for communicator in opened:
        await communicator.disconnect()


async def events_until(communicator, last: str, *, ignore=("worker.heartbeat",), timeout: float = 15) -> list[str]:
    names = []
    while not names or names[-1] != last:
        frame = await communicator.receive_json_from(timeout=timeout)
        if frame["event"] not in ignore:
            names.append(frame["event"])
    return names


async def test_a_pool_created_used_and_closed_is_followed_in_order(stream, staff_token, start_worker, fake_server, alice, connect):
    subscriber = await stream(staff_token)
    await sync(pools.add_worker)(name="alpha", address=fake_server.url, query_type="chat", wire_format="openai")
    pool = await sync(pools.create_pool)("$CHAT", query_type="chat", realm="$CHAT", members=["alpha"])
    start_worker("--concurrency", "4")
    client = await connect(alice.guid)

    await client.send({"type": "submit_query", "query": {"prompt": "hello", "query_type": "chat"}})
    await client.receive_until("query_result")
    await sync(pools.delete_pool)(pool)

    assert await events_until(subscriber, "pool.closed") == [
        "worker.saved", "pool.created", "member.added", "query.accepted", "query.started", "query.completed", "pool.closed",
    ]


async def test_a_subscriber_sees_only_what_its_filters_ask_for(stream, staff_token):
    subscriber = await stream(staff_token, pools=["$B"], events=["pool.closed", "member.added"])
    await sync(pools.add_worker)(name="alpha", address="127.0.0.1:1", query_type="chat")
    for name in ("$A", "$B"):
        await sync(pools.create_pool)(name, query_type="chat", members=["alpha"])
    await sync(pools.delete_pool)(await sync(PoolAlias.objects.get)(name="$A"))
    await sync(pools.delete_pool)(await sync(PoolAlias.objects.get)(name="$B"))

    first = await subscriber.receive_json_from(timeout=10)
    second = await subscriber.receive_json_from(timeout=10)

    assert [(first["event"], first["pool"]), (second["event"], second["pool"])] == [("member.added", "$B"), ("pool.closed", "$B")]
    assert await subscriber.receive_nothing(timeout=0.5)


@pytest.mark.parametrize("who", ["nobody", "a non-staff login", "an unknown token"])
async def test_only_staff_may_subscribe(stream, who, db):
    token = {"nobody": None, "an unknown token": "nope"}.get(who)
    if who == "a non-staff login":
        from django.contrib.auth.models import User as Login

        token = (await sync(Token.objects.create)(user=await sync(Login.objects.create_user)("visitor"))).key
    communicator = await stream(token, refused=True)

    frame = await communicator.receive_json_from()
    assert (frame["type"], frame["code"]) == ("error", "not_authenticated")
    assert (await communicator.receive_output())["code"] == 4003


async def test_an_unknown_event_type_in_a_filter_is_refused(stream, staff_token):
    subscriber = await stream(staff_token)

    await subscriber.send_json_to({"type": "subscribe", "events": ["pool.exploded"]})

    assert (await subscriber.receive_json_from())["code"] == "bad_field"


async def test_a_subscriber_that_falls_behind_is_dropped_while_queries_go_on(
    stream, staff_token, settings, start_worker, fake_server, register_worker, alice, connect
):
    settings.RENTAHAL_EVENT_BUFFER = 5
    slow = await stream(staff_token)
    await sync(register_worker)(fake_server, "openai")
    start_worker("--concurrency", "4")
    burst = [{"query_id": str(n), "user": "u", "realm": "$CHAT", "query_type": "chat", "status": "done", "worker": ""} for n in range(10)]

    # One batch of ten queries is more than the subscriber may hold at once.
    await get_channel_layer().group_send(QUERY_EVENTS, {"type": "queries.changed", "op": "completed", "queries": burst})
    client = await connect(alice.guid)
    await client.send({"type": "submit_query", "query": {"prompt": "still served", "query_type": "chat"}})
    result = (await client.receive_until("query_result"))[-1]

    assert "still served" in result["result"]
    outputs = []
    while not outputs or outputs[-1]["type"] != "websocket.close":
        outputs.append(await slow.receive_output(timeout=5))
    assert outputs[-1]["code"] == 4008
    assert len(outputs) - 1 <= 5
