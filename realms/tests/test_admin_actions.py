"""The admin's doors to actions that belong to realms: terminating a user's queries and
broadcasting to the users, which reach the users' open sockets as a sysop's frames do."""
import pytest
from asgiref.sync import sync_to_async

from accounts.models import Query
from realms import lifecycle
from realms.frames import parse_submission
from rentahal.sharding import shard_for_guid

pytestmark = pytest.mark.django_db(transaction=True)


async def test_admin_broadcast_reaches_every_open_socket(admin_client, alice, bob, default_realms, connect):
    tabs = [await connect(alice.guid), await connect(bob.guid)]

    response = await sync_to_async(admin_client.post)("/admin/realms/realm/broadcast/", {"message": "back in five", "realm": ""})

    assert response.status_code == 302
    for tab in tabs:
        assert await tab.receive() == {"type": "sysop_message", "message": "back in five"}


async def test_admin_terminates_the_selected_users_queries(admin_client, alice, default_realms, connect):
    tab = await connect(alice.guid)
    frame = await sync_to_async(lifecycle.accept_query)(alice.guid, parse_submission({"prompt": "stop me", "query_type": "chat"}))

    await sync_to_async(admin_client.post)(
        f"/admin/accounts/user/?shard={shard_for_guid(alice.guid)}",
        {"action": "terminate_queries", "_selected_action": [alice.guid]},
    )

    frames = await tab.receive_until("query_terminated")
    assert frames[0]["message"] == "Query failed: terminated by the sysop"
    assert frames[-1] == {"type": "query_terminated", "guid": alice.guid, "query_ids": [frame["query_id"]]}
    assert (await sync_to_async(Query.objects.get)(pk=frame["query_id"])).status == "failed"
