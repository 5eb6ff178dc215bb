"""A Postgres restart seen from /ws (docs/protocol.md §1), found by the chaos suite: a frame
is answered with a `temporarily_unavailable` error and the socket stays open, a handshake is
told to retry and closed with 1013, never a close with 1011. The outage is real: the test
databases refuse every new connection, as they do while Postgres restarts."""
import contextlib

import pytest
from channels.db import database_sync_to_async

from realms.consumers import TRY_AGAIN_LATER
from tests.test_recovery import set_test_databases_reachable

pytestmark = pytest.mark.django_db(transaction=True)

OUTAGE_ANSWER_TIMEOUT = 30


@contextlib.asynccontextmanager
async def postgres_down():
    await database_sync_to_async(set_test_databases_reachable)(False)
    try:
        yield
    finally:
        await database_sync_to_async(set_test_databases_reachable)(True)


async def test_a_frame_sent_while_postgres_is_down_is_answered_with_a_retry_error_and_the_socket_stays_open(
    alice, connect
):
    client = await connect(alice.guid)
    async with postgres_down():
        await client.send({"type": "get_previous_queries"})
        answer = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)

    await client.send({"type": "get_previous_queries"})
    after = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)

    assert (answer["type"], answer["code"]) == ("error", "temporarily_unavailable")
    assert "try again" in answer["message"].lower()
    assert after == {"type": "previous_queries", "data": []}


async def test_a_connect_while_postgres_is_down_is_told_to_retry_and_closed_with_try_again_later(alice, connect):
    async with postgres_down():
        client = await connect(alice.guid, greeting=False)
        answer = await client.receive(timeout=OUTAGE_ANSWER_TIMEOUT)
        closing = await client.communicator.receive_output(timeout=OUTAGE_ANSWER_TIMEOUT)

    assert (answer["type"], answer["code"]) == ("error", "temporarily_unavailable")
    assert closing == {"type": "websocket.close", "code": TRY_AGAIN_LATER}
