"""A worker added or removed through any door (the admin, the pools API, a sysop's frame, a
command) reaches every open socket as `worker_update`, once the change has committed."""
import pytest
from asgiref.sync import sync_to_async

from pools import actions

pytestmark = pytest.mark.django_db(transaction=True)


def admin_add_form(**fields) -> dict:
    form = {
        "name": "gpu1", "address": "127.0.0.5:8000", "query_type": "chat", "wire_format": "predict", "model": "",
        "api_key": "", "realm": "", "health_score": "100", "max_concurrency": "0",
        "specializations-TOTAL_FORMS": "0", "specializations-INITIAL_FORMS": "0",
        "specializations-MIN_NUM_FORMS": "0", "specializations-MAX_NUM_FORMS": "1000",
    }
    form.update(fields)
    return form


async def worker_names(tab) -> list[str]:
    update = (await tab.receive_until("worker_update"))[-1]
    return [worker["name"] for worker in update["workers"]]


async def test_a_worker_added_in_the_admin_reaches_every_open_socket(admin_client, alice, connect):
    tab = await connect(alice.guid)

    response = await sync_to_async(admin_client.post)("/admin/pools/worker/add/", admin_add_form())

    assert response.status_code == 302
    assert await worker_names(tab) == ["gpu1"]


async def test_a_worker_added_through_the_api_reaches_every_open_socket(admin_client, alice, connect):
    tab = await connect(alice.guid)

    response = await sync_to_async(admin_client.post)(
        "/api/pools/workers/", {"name": "gpu1", "address": "127.0.0.5:8000", "query_type": "chat"},
        content_type="application/json",
    )

    assert response.status_code == 201
    assert response.json()["name"] == "gpu1"
    assert await worker_names(tab) == ["gpu1"]


async def test_a_worker_deleted_in_the_admin_leaves_every_open_socket(admin_client, alice, connect):
    worker = await sync_to_async(actions.add_worker)(name="gpu1", address="127.0.0.5:8000", query_type="chat")
    tab = await connect(alice.guid)

    await sync_to_async(admin_client.post)(f"/admin/pools/worker/{worker.pk}/delete/", {"post": "yes"})

    assert await worker_names(tab) == []


async def test_a_worker_removed_through_the_api_leaves_every_open_socket(admin_client, alice, connect):
    await sync_to_async(actions.add_worker)(name="gpu1", address="127.0.0.5:8000", query_type="chat")
    tab = await connect(alice.guid)

    response = await sync_to_async(admin_client.delete)("/api/pools/workers/gpu1/")

    assert response.status_code == 204
    assert await worker_names(tab) == []


async def test_a_worker_registered_by_a_command_reaches_every_open_socket(alice, connect):
    tab = await connect(alice.guid)

    await sync_to_async(actions.add_worker)(name="smollm2-local", address="http://127.0.0.1:8090", query_type="chat")

    assert await worker_names(tab) == ["smollm2-local"]


async def test_a_worker_the_admin_refuses_reaches_no_socket(admin_client, alice, connect):
    tab = await connect(alice.guid)

    response = await sync_to_async(admin_client.post)("/admin/pools/worker/add/", admin_add_form(query_type="telepathy"))

    assert response.status_code == 200
    assert "is not one of the available choices" in response.content.decode()
    assert await tab.communicator.receive_nothing(timeout=0.5)
