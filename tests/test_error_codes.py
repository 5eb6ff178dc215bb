"""One refusal, one code, whichever door it came through: the pools API and the realm API
answer `{"error": {"code", "message", "fields"}}`, the socket an `error` frame with the same
code (rentahal.errors)."""
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User as StaffUser

from pools import actions

pytestmark = pytest.mark.django_db(transaction=True)

TELEPATHY_WORKER = {"name": "w", "address": "127.0.0.1:1", "type": "telepathy"}


async def socket_error(tab, frame: dict) -> dict:
    await tab.send(frame)
    error = await tab.receive()
    assert error["type"] == "error"
    return error


async def test_an_unknown_query_type_is_invalid_through_every_door(admin_client, sysop, default_realms, connect):
    tab = await connect(sysop.guid)
    post = sync_to_async(admin_client.post)

    by_socket = await socket_error(tab, {"type": "add_worker", "worker": TELEPATHY_WORKER})
    by_workers_api = await post(
        "/api/pools/workers/", {"name": "w", "address": "127.0.0.1:1", "query_type": "telepathy"},
        content_type="application/json",
    )
    by_pools_api = await post(
        "/api/pools/", {"name": "$MIND", "query_type": "telepathy", "members": ["w"]}, content_type="application/json"
    )
    by_realms_api = await post(
        "/api/realms/", {"name": "$MIND", "primary_query_type": "telepathy"}, content_type="application/json"
    )

    assert by_socket["code"] == "invalid"
    assert list(by_socket["fields"]) == ["query_type"]
    assert by_workers_api.status_code == by_pools_api.status_code == by_realms_api.status_code == 400
    assert by_workers_api.json()["error"] == {key: by_socket[key] for key in ("code", "message", "fields")}
    assert by_pools_api.json()["error"]["code"] == "invalid"
    assert list(by_pools_api.json()["error"]["fields"]) == ["query_type"]
    assert by_realms_api.json()["error"]["code"] == "invalid"
    assert list(by_realms_api.json()["error"]["fields"]) == ["primary_query_type"]


async def test_a_pool_member_of_the_wrong_type_is_invalid_on_create_and_on_change(admin_client):
    for name, query_type in [("alpha", "chat"), ("painter", "imagine")]:
        await sync_to_async(actions.add_worker)(name=name, address="127.0.0.1:1", query_type=query_type)
    pool = await sync_to_async(actions.create_pool)("$CHAT", query_type="chat", members=["alpha"])

    created = await sync_to_async(admin_client.post)(
        "/api/pools/", {"name": "$MIXED", "query_type": "chat", "members": ["alpha", "painter"]},
        content_type="application/json",
    )
    changed = await sync_to_async(admin_client.patch)(
        f"/api/pools/{pool.pk}/", {"members": ["alpha", "painter"]}, content_type="application/json"
    )

    for response in (created, changed):
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid"
        assert "these workers serve another type: painter (imagine)" in error["fields"]["members"][0]


async def test_someone_not_allowed_is_forbidden_through_every_door(client, alice, default_realms, connect):
    tab = await connect(alice.guid)
    login = await sync_to_async(StaffUser.objects.create_user)("someone", password="pw")
    await sync_to_async(client.force_login)(login)

    by_socket = await socket_error(tab, {"type": "add_worker", "worker": TELEPATHY_WORKER})
    by_pools_api = await sync_to_async(client.get)("/api/pools/")
    by_realms_api = await sync_to_async(client.get)("/api/realms/")

    assert by_socket["code"] == "forbidden"
    assert by_pools_api.status_code == by_realms_api.status_code == 403
    assert by_pools_api.json()["error"]["code"] == by_realms_api.json()["error"]["code"] == "forbidden"


async def test_removing_an_unknown_worker_is_the_same_refusal_on_the_socket_and_the_api(admin_client, sysop, connect):
    tab = await connect(sysop.guid)

    by_socket = await socket_error(tab, {"type": "remove_worker", "worker_name": "ghost"})
    by_api = await sync_to_async(admin_client.delete)("/api/pools/workers/ghost/")

    assert by_api.status_code == 404
    assert by_api.json()["error"] == {"code": "unknown_worker", "message": "No worker named 'ghost'."}
    assert (by_socket["code"], by_socket["message"]) == ("unknown_worker", "No worker named 'ghost'.")


def test_a_body_that_is_not_json_is_malformed(admin_client):
    response = admin_client.post("/api/pools/", "{not json", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed"


def test_an_unknown_pool_is_not_found(admin_client):
    response = admin_client.get("/api/pools/999/")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_anonymous_caller_is_told_to_log_in(client):
    response = client.get("/api/pools/")

    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "not_authenticated", "message": "Authentication credentials were not provided.",
    }
