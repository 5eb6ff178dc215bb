"""The operators' console for users, queries and the ledger, shard by shard."""
import html
import re

import pytest

from accounts.actions.queries import Answer, Failure, accept_query, fail_queries, finish_queries, start_queries
from accounts.actions.keys import create_key, hash_secret
from accounts.actions.users import get_or_create_user
from accounts.models import ApiKey, Charge, Query, User
from conftest import make_staff
from rentahal.sharding import shard_aliases, shard_for_guid
from tests.shard_helpers import guid_with_prefix

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


def asked(guid: str, prompt: str) -> Query:
    return accept_query(
        guid, query_type="chat", prompt=prompt, model_type="worker_node", model_name="", image="", realm="$CHAT"
    )


def answered(guid: str, prompt: str, *, seconds: float) -> Query:
    """A query of the user's answered in `seconds` and charged for them."""
    [query] = start_queries([asked(guid, prompt).pk])
    [query] = finish_queries([Answer(query, result="an answer", result_type="text", worker="fake", processing_time=seconds)])
    return query


def test_staff_who_may_view_queries_sees_a_failed_query_with_its_user_prompt_and_reason(client, alice, default_realms):
    query = asked(alice.guid, "why is the sky blue?")
    fail_queries([Failure(query.pk, "no chat worker answered")])
    client.force_login(make_staff("auditor", "accounts.view_query"))

    listing = client.get("/admin/accounts/query/", {"shard": shard_for_guid(alice.guid), "status__exact": "failed"})

    row = re.search(rf"<tr>.*?{query.pk}.*?</tr>", listing.content.decode(), re.S)[0]
    assert "alice" in row
    assert "why is the sky blue?" in row
    assert "no chat worker answered" in row


def test_a_query_searched_by_its_id_is_listed_from_its_own_shard(admin_client, default_realms):
    guid = get_or_create_user(guid_with_prefix("01")).guid
    query = asked(guid, "on the second shard")
    assert shard_for_guid(guid) != shard_aliases()[0]

    listing = admin_client.get("/admin/accounts/query/", {"q": str(query.pk)})

    assert "on the second shard" in listing.content.decode()


def charge_link(listing) -> str:
    return html.unescape(re.search(r'href="(/admin/accounts/charge/\d+/change/[^"]*)"', listing.content.decode())[1])


def test_a_charge_opens_from_the_list_as_that_shards_charge(admin_client, default_realms):
    # Charge ids are per database: both charges are number 1 on their shards.
    answered(get_or_create_user(guid_with_prefix("00")).guid, "on the first shard", seconds=1.0)
    second = answered(get_or_create_user(guid_with_prefix("01")).guid, "on the second shard", seconds=5.0)

    first_shards_list = admin_client.get("/admin/accounts/charge/")
    found_by_query = admin_client.get("/admin/accounts/charge/", {"q": str(second.pk)})

    assert admin_client.get(charge_link(first_shards_list)).status_code == 200
    assert str(second.cost) in admin_client.get(charge_link(found_by_query)).content.decode()


def test_a_charge_cannot_be_changed_or_deleted(admin_client, alice, default_realms):
    query = answered(alice.guid, "billed once", seconds=1.0)
    charge = Charge.objects.get(query_id=query.pk)
    shard = shard_for_guid(alice.guid)
    changelist = f"_changelist_filters=shard%3D{shard}"

    change = admin_client.post(f"/admin/accounts/charge/{charge.pk}/change/?{changelist}", {"amount": "0"})
    delete = admin_client.post(f"/admin/accounts/charge/{charge.pk}/delete/?{changelist}", {"post": "yes"})

    assert (change.status_code, delete.status_code) == (403, 403)
    assert Charge.objects.get(query_id=query.pk).amount == query.cost


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


def test_a_querys_page_names_the_image_sent_by_its_size_and_links_its_charge(admin_client, alice, default_realms):
    image = "A" * 4096
    [query] = start_queries([accept_query(
        alice.guid, query_type="vision", prompt="what is this?", model_type="worker_node", model_name="", image=image,
        realm="$VISION",
    ).pk])
    finish_queries([Answer(query, result="a cat", result_type="text", worker="fake", processing_time=1.0)])
    charge = Charge.objects.get(query_id=query.pk)

    page = admin_client.get(f"/admin/accounts/query/{query.pk}/change/").content.decode()

    assert "image, 3 KiB" in page
    assert image not in page
    assert f'href="/admin/accounts/charge/{charge.pk}/change/?_changelist_filters=shard%3D{shard_for_guid(alice.guid)}"' in page
