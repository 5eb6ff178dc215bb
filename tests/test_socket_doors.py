"""Who gets through /ws and what they see there: the handshake's Origin against the configured
hosts, and worker addresses for sysops only."""
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from pools import actions
from pools.models import Worker

pytestmark = pytest.mark.django_db(transaction=True)


async def handshake(origin: bytes | None) -> bool:
    from rentahal.asgi import application

    headers = [(b"origin", origin)] if origin is not None else []
    communicator = WebsocketCommunicator(application, "/ws", headers=headers)
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return connected


@pytest.mark.parametrize(
    "origin",
    [b"https://evil.example", b"http://localhost.evil.example", b"null", b"http://127.0.0.2:8000"],
)
async def test_a_socket_from_a_foreign_origin_is_refused(origin):
    assert await handshake(origin) is False


@pytest.mark.parametrize("origin", [b"http://localhost:8000", b"http://127.0.0.1:8000", b"http://[::1]:8000"])
async def test_a_socket_from_a_configured_host_is_accepted(origin):
    assert await handshake(origin) is True


async def test_a_host_added_to_allowed_hosts_is_accepted_as_origin(settings):
    settings.ALLOWED_HOSTS = [".rentahal.example"]

    assert await handshake(b"https://broker.rentahal.example") is True
    assert await handshake(b"http://localhost:8000") is False


async def test_a_socket_with_no_origin_is_a_non_browser_client_and_is_accepted():
    assert await handshake(None) is True


@pytest.fixture
def two_workers(db):
    return [
        Worker.objects.create(name=name, address=f"http://10.0.0.{index}:8000", query_type="chat", wire_format="openai")
        for index, name in enumerate(("gpu1", "gpu2"), start=1)
    ]


async def test_a_user_sees_worker_names_and_health_but_no_addresses(alice, two_workers, connect):
    client = await connect(alice.guid)

    [update] = [frame for frame in client.frames if frame["type"] == "worker_update"]

    assert [worker["name"] for worker in update["workers"]] == ["gpu1", "gpu2"]
    assert all("health_score" in worker and "address" not in worker for worker in update["workers"])


async def test_a_sysop_sees_worker_addresses(sysop, two_workers, connect):
    client = await connect(sysop.guid)

    [update] = [frame for frame in client.frames if frame["type"] == "worker_update"]

    assert [worker["address"] for worker in update["workers"]] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]


async def test_a_broadcast_worker_update_carries_addresses_only_to_sysops(sysop, alice, two_workers, connect):
    sysop_tab = await connect(sysop.guid)
    alice_tab = await connect(alice.guid)

    await sync_to_async(actions.remove_worker)("gpu1", acting_user=None)

    seen_by_alice = (await alice_tab.receive_until("worker_update"))[-1]
    seen_by_sysop = (await sysop_tab.receive_until("worker_update"))[-1]
    assert seen_by_alice["workers"] == [{key: value for key, value in seen_by_sysop["workers"][0].items() if key != "address"}]
    assert seen_by_sysop["workers"][0]["address"] == "http://10.0.0.2:8000"
    assert "address" not in seen_by_alice["workers"][0]
