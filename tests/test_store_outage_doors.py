"""Store outages at every door (docs/protocol.md §1, README "Outages"): while Postgres or
Redis is down a socket gets an `error` frame saying when to retry, never a close with 1011;
a handshake is closed with 1013; every HTTP door answers 503 `temporarily_unavailable` with
`Retry-After`, never a 500. And the same socket and doors work once the store is back.

Postgres is shut for real: the test databases refuse new connections and drop the open
ones (tests.outages.postgres_down). Redis is a server of the test's own, stopped."""
import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from accounts.models import Query
from pools import actions as pools
from realms.consumers import TRY_AGAIN_LATER
from rentahal import sharding
from rentahal.pushes import user_group
from tests.outages import own_redis, postgres_down  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True)

SUBMISSION = {"prompt": "hello", "query_type": "chat", "model_type": "worker_node", "model_name": "fake-model"}
OUTAGE_ANSWER_TIMEOUT = 30
METRICS_TOKEN = "scraper-token"


async def answer_to(client, frame: dict) -> dict:
    await client.send(frame)
    return await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)


def assert_told_to_retry(frame: dict, settings) -> None:
    assert frame["type"] == "error"
    assert frame["code"] == "temporarily_unavailable"
    assert "try again" in frame["message"].lower()
    assert frame["retry_after"] == settings.RENTAHAL_STORE_OUTAGE_RETRY_AFTER


@pytest.mark.parametrize(
    "frame",
    [{"type": "submit_query", "query": SUBMISSION}, {"type": "get_previous_queries"}, {"type": "set_nickname", "nickname": "al"}],
    ids=["submit_query", "get_previous_queries", "set_nickname"],
)
async def test_a_frame_sent_while_postgres_is_down_is_answered_with_a_retry_error_and_the_socket_stays_open(
    default_realms, alice, connect, settings, frame, postgres_down
):
    client = await connect(alice.guid)

    with postgres_down():
        answer = await answer_to(client, frame)
        again = await answer_to(client, frame)

    assert_told_to_retry(answer, settings)
    assert again["code"] == "temporarily_unavailable"
    assert (await answer_to(client, {"type": "get_previous_queries"}))["type"] == "previous_queries"


async def test_a_submit_refused_while_postgres_is_down_leaves_no_query_and_works_when_sent_again(
    default_realms, alice, connect, postgres_down
):
    client = await connect(alice.guid)
    with postgres_down():
        await answer_to(client, {"type": "submit_query", "query": SUBMISSION})
    count = sync_to_async(Query.objects.using(sharding.shard_for_guid(alice.guid)).count)
    assert await count() == 0

    answer = await answer_to(client, {"type": "submit_query", "query": SUBMISSION})

    assert answer["type"] == "queue_update"
    assert await count() == 1


async def test_a_connect_while_postgres_is_down_is_told_to_retry_and_closed_with_try_again_later(
    default_realms, alice, connect, settings, postgres_down
):
    with postgres_down():
        client = await connect(alice.guid, greeting=False)
        answer = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)
        closing = await client.communicator.receive_output(timeout=OUTAGE_ANSWER_TIMEOUT)

    assert_told_to_retry(answer, settings)
    assert closing == {"type": "websocket.close", "code": TRY_AGAIN_LATER}


async def test_a_connect_after_postgres_returns_is_greeted_as_usual(default_realms, alice, connect, postgres_down):
    with postgres_down():
        refused = await connect(alice.guid, greeting=False)
        await refused.receive(timeout=OUTAGE_ANSWER_TIMEOUT)

    client = await connect(alice.guid, greeting=False)
    frames = await client.receive_until("huggingface_update", timeout=OUTAGE_ANSWER_TIMEOUT)

    assert [frame["type"] for frame in frames] == ["user_info", "previous_queries", "worker_update", "huggingface_update"]


async def test_a_push_that_must_reread_the_user_while_postgres_is_down_sends_the_socket_to_reconnect(
    default_realms, alice, connect, settings, postgres_down
):
    client = await connect(alice.guid)

    with postgres_down():
        await get_channel_layer().group_send(user_group(alice.guid), {"type": "user_changed"})
        answer = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)
        closing = await client.communicator.receive_output(timeout=OUTAGE_ANSWER_TIMEOUT)

    assert_told_to_retry(answer, settings)
    assert closing == {"type": "websocket.close", "code": TRY_AGAIN_LATER}


# Every HTTP door: the staff APIs (with the operator's session) and /metrics (with its token);
# the admin's pages need Postgres only.
DOORS = ["/api/pools/", "/api/pools/workers/", "/api/realms/", "/api/realms/summary/", "/metrics"]
DATABASE_DOORS = [*DOORS, "/admin/"]


@pytest.fixture
def door_client(client, operator, settings, fake_server, register_worker):
    """The operator's logged-in client, with a pool and its member to show (their live state is in Redis)."""
    settings.RENTAHAL_METRICS_TOKEN = METRICS_TOKEN
    worker = register_worker(fake_server, "openai", "chat")
    pools.ensure_pool("$CHAT", query_type="chat", realm="$CHAT", members=[worker.name], acting_user=None)
    client.force_login(operator)
    return client


def knock(client, door: str):
    return client.get(door, headers={"Authorization": f"Bearer {METRICS_TOKEN}"} if door == "/metrics" else {})


def assert_503_retry_later(response, settings) -> None:
    assert response.status_code == 503, response.content[:300]
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "temporarily_unavailable"
    assert response.json()["error"]["retry_after"] == settings.RENTAHAL_STORE_OUTAGE_RETRY_AFTER
    assert response["Retry-After"] == str(round(settings.RENTAHAL_STORE_OUTAGE_RETRY_AFTER))


@pytest.mark.parametrize("door", DATABASE_DOORS)
def test_an_http_door_answers_503_with_retry_after_while_postgres_is_down(
    default_realms, door_client, settings, door, postgres_down
):
    with postgres_down():
        response = knock(door_client, door)

    assert_503_retry_later(response, settings)
    assert knock(door_client, door).status_code == 200


@pytest.mark.parametrize("door", DOORS)
def test_an_http_door_answers_503_with_retry_after_while_redis_is_down(own_redis, door_client, settings, door):
    own_redis.stop()
    response = knock(door_client, door)
    own_redis.start()

    assert_503_retry_later(response, settings)
    assert knock(door_client, door).status_code == 200
