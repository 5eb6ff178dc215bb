"""The operators' console for users, queries and the ledger, shard by shard."""
import re

import pytest

from accounts.actions.queries import accept_query
from accounts.actions.keys import create_key, hash_secret
from accounts.models import ApiKey, Query, User
from rentahal.sharding import shard_for_guid

pytestmark = pytest.mark.django_db(databases="__all__")


def test_user_list_shows_the_users_of_the_chosen_shard(admin_client, alice, bob):
    response = admin_client.get("/admin/accounts/user/", {"shard": shard_for_guid(alice.guid)})

    assert response.status_code == 200
    assert "alice" in response.content.decode()


def test_user_list_without_a_shard_shows_the_first_shard(admin_client, alice):
    assert admin_client.get("/admin/accounts/user/").status_code == 200


def test_user_page_is_found_on_its_shard_by_guid(admin_client, alice):
    response = admin_client.get(f"/admin/accounts/user/{alice.guid}/change/")

    assert response.status_code == 200
    assert alice.guid in response.content.decode()


def test_staff_ban_action_bans_the_selected_users(admin_client, alice):
    response = admin_client.post(
        f"/admin/accounts/user/?shard={shard_for_guid(alice.guid)}",
        {"action": "ban_users", "_selected_action": [alice.guid]},
        follow=True,
    )

    assert "1 user(s) banned." in response.content.decode()
    assert User.objects.get(pk=alice.guid).is_banned


def test_queries_are_listed_and_cannot_be_edited_or_deleted(admin_client, alice, default_realms):
    query = accept_query(
        alice.guid, query_type="chat", prompt="for the record", model_type="worker_node", model_name="", image="",
        realm="$CHAT",
    )

    listing = admin_client.get("/admin/accounts/query/", {"shard": shard_for_guid(alice.guid)})
    delete = admin_client.post(f"/admin/accounts/query/{query.pk}/delete/", {"post": "yes"})

    assert str(query.pk) in listing.content.decode()
    assert delete.status_code == 403
    assert Query.objects.filter(pk=query.pk).exists()


def test_ledger_is_read_only(admin_client):
    assert admin_client.get("/admin/accounts/charge/add/").status_code == 403


@pytest.mark.django_db(transaction=True, databases="__all__")
async def test_staff_ban_closes_every_open_socket_of_the_user(admin_client, alice, connect):
    from asgiref.sync import sync_to_async

    tab = await connect(alice.guid)

    await sync_to_async(admin_client.post)(
        f"/admin/accounts/user/?shard={shard_for_guid(alice.guid)}",
        {"action": "ban_users", "_selected_action": [alice.guid]},
    )

    assert await tab.receive() == {"type": "user_banned", "guid": alice.guid}
    assert await tab.receive() == {"type": "error", "code": "forbidden", "message": "You are banned from this service."}
    assert (await tab.communicator.receive_output(timeout=2))["type"] == "websocket.close"


def test_operator_makes_a_key_for_a_user_and_sees_its_secret_once(admin_client, alice):
    response = admin_client.post(
        "/admin/accounts/apikey/add/",
        {"user_guid": alice.guid, "name": "ops", "requests_per_minute": 10, "max_in_flight": 2, "allowed_models": "[]"},
        follow=True,
    )

    key = ApiKey.objects.get()
    secret = re.search(r"shown only now: (rh-[A-Za-z0-9_-]{43})", response.content.decode())[1]
    assert (key.user_guid, key.requests_per_minute, key.max_in_flight) == (alice.guid, 10, 2)
    assert key.hashed == hash_secret(secret)
    assert secret not in admin_client.get("/admin/accounts/apikey/").content.decode()


def test_operator_revokes_selected_keys(admin_client, alice):
    key, secret = create_key(alice.guid, acting_user=None)
    response = admin_client.post(
        "/admin/accounts/apikey/", {"action": "revoke_keys", "_selected_action": [key.pk]}, follow=True
    )

    assert "1 key(s) revoked." in response.content.decode()
    assert ApiKey.objects.get().revoked_at is not None
