"""The operators' live dashboard socket (/ws/dashboard): only a staff login may open it, and
it sends each realm's figures, the ones /metrics exports, every second."""
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User as StaffUser
from django.test import Client

from rentahal import metrics
from rentahal.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def session_cookie(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    return [(b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())]


async def open_dashboard(headers=()) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, "/ws/dashboard", headers=list(headers))


async def test_anonymous_visitor_cannot_open_the_dashboard(default_realms):
    communicator = await open_dashboard()

    connected, code = await communicator.connect()

    assert (connected, code) == (False, 4003)


async def test_a_login_that_is_not_staff_cannot_open_the_dashboard(default_realms):
    visitor = await sync_to_async(StaffUser.objects.create_user)("visitor", password="pw")
    communicator = await open_dashboard(await sync_to_async(session_cookie)(visitor))

    connected, code = await communicator.connect()

    assert (connected, code) == (False, 4003)


async def test_staff_get_every_realms_figures_every_second(default_realms, operator):
    metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="gpu1", processing_time=0.5, ok=True)])
    metrics.record_query_outcomes([metrics.QueryOutcome("$CHAT", worker="", processing_time=0.0, ok=False)])
    communicator = await open_dashboard(await sync_to_async(session_cookie)(operator))
    connected, _ = await communicator.connect()
    assert connected

    first = await communicator.receive_json_from(timeout=10)
    second = await communicator.receive_json_from(timeout=10)

    assert first["type"] == second["type"] == "dashboard"
    assert 0.5 <= second["data"]["at"] - first["data"]["at"] < 5
    realms = {realm["name"]: realm for realm in first["data"]["realms"]}
    assert sorted(realms) == sorted(realm.name for realm in default_realms.values())
    chat = realms["$CHAT"]
    assert (chat["queries_processed"], chat["errors"], chat["queue_depth"], chat["in_flight"]) == (2, 1, 0, 0)
    assert chat["processing_time"] == {"p50": 0.5, "p95": 0.5, "p99": 0.5}
    assert first["data"]["workers"] == {"idle": 0, "busy": 0, "cooling": 0, "blacklisted": 0}
    await communicator.disconnect()
