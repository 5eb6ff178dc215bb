"""Sysops are told over /ws, as it happens, when the health rules blacklist a worker or restore
it (`worker_alert`), and when a realm loses its last serving worker or gets one back
(`realm_alert`, docs/protocol.md §1); only changes are pushed, and only to sysops."""
import pytest
from asgiref.sync import sync_to_async

from accounts.actions.users import set_sysop
from pools import health
from pools.clients import ModelServerError
from realms.alerts import alert_realm_changes

pytestmark = pytest.mark.django_db(transaction=True)

ALERTS = ("worker_alert", "realm_alert")


async def health_round() -> None:
    await sync_to_async(health.check_worker_health)()


async def alerts_until(tab, frame_type: str) -> list[dict]:
    """Return the alerts the socket got up to and including the first `frame_type`."""
    return [frame for frame in await tab.receive_until(frame_type, timeout=5) if frame["type"] in ALERTS]


async def assert_told_nothing(tab) -> None:
    assert await tab.communicator.receive_nothing(timeout=0.5)


@pytest.fixture
def chat_worker(fake_server, register_worker, default_realms):
    """Register a worker that serves $CHAT alone; the health rules may be told to start it anywhere."""

    def register(health_score=None):
        return register_worker(fake_server, "openai", name="gpu1", realm="$CHAT", health_score=health_score)

    return register


async def look_at_realms() -> None:
    """Record every realm's service as the end of a health round does, so what the test
    changes next is the only news."""
    await sync_to_async(alert_realm_changes)()


async def test_a_sysop_is_told_when_failing_probes_blacklist_a_worker(fake_server, chat_worker, sysop, connect):
    fake_server.configure(health_status=500)
    await sync_to_async(chat_worker)(health_score=10)
    tab = await connect(sysop.guid)

    await health_round()

    [alert] = await alerts_until(tab, "worker_alert")
    assert alert == {
        "type": "worker_alert", "worker": "gpu1", "state": "blacklisted", "reason": "health probe: answered HTTP 500",
    }


async def test_a_sysop_is_told_when_a_stopped_server_gets_its_worker_blacklisted(fake_server, chat_worker, sysop, connect):
    await sync_to_async(chat_worker)(health_score=5)
    fake_server.stop()
    tab = await connect(sysop.guid)

    await health_round()

    [alert] = await alerts_until(tab, "worker_alert")
    assert (alert["worker"], alert["state"]) == ("gpu1", "blacklisted")
    assert alert["reason"].startswith("health probe: unreachable")


async def test_a_sysop_is_told_when_a_blacklisted_worker_answers_its_probe_again(chat_worker, sysop, connect):
    await sync_to_async(chat_worker)(health_score=0)
    tab = await connect(sysop.guid)

    await health_round()

    [alert] = await alerts_until(tab, "worker_alert")
    assert alert == {"type": "worker_alert", "worker": "gpu1", "state": "restored", "reason": "health probe: healthy"}


async def test_a_sysop_is_told_when_failed_queries_blacklist_a_worker(chat_worker, sysop, connect):
    await sync_to_async(chat_worker)(health_score=10)
    await look_at_realms()
    tab = await connect(sysop.guid)

    await sync_to_async(health.record_failure)("gpu1", ModelServerError("upstream exploded", kind="server", status=500))

    assert await alerts_until(tab, "realm_alert") == [
        {"type": "worker_alert", "worker": "gpu1", "state": "blacklisted", "reason": "query failed (server): upstream exploded"},
        {"type": "realm_alert", "realm": "$CHAT", "state": "no_healthy_worker"},
    ]


async def test_a_user_who_is_not_sysop_is_never_told(fake_server, chat_worker, sysop, alice, connect):
    fake_server.configure(health_status=500)
    await sync_to_async(chat_worker)(health_score=10)
    users_tab, sysops_tab = await connect(alice.guid), await connect(sysop.guid)

    await health_round()
    await alerts_until(sysops_tab, "worker_alert")
    fake_server.configure(health_status=200)
    await health_round()
    await alerts_until(sysops_tab, "worker_alert")

    await assert_told_nothing(users_tab)


async def test_the_last_healthy_worker_of_a_realm_going_down_and_back_is_told_to_sysops(
    fake_server, chat_worker, sysop, connect
):
    await sync_to_async(chat_worker)(health_score=10)
    await look_at_realms()
    tab = await connect(sysop.guid)
    fake_server.configure(health_status=500)

    await health_round()
    down = await alerts_until(tab, "realm_alert")
    fake_server.configure(health_status=200)
    await health_round()
    back = await alerts_until(tab, "realm_alert")

    assert [(alert["type"], alert["state"]) for alert in down] == [("worker_alert", "blacklisted"), ("realm_alert", "no_healthy_worker")]
    assert down[1]["realm"] == "$CHAT"
    assert [(alert["type"], alert["state"]) for alert in back] == [("worker_alert", "restored"), ("realm_alert", "serving")]
    assert back[1]["realm"] == "$CHAT"


async def test_a_realm_that_keeps_another_healthy_worker_is_not_reported(fake_server, register_worker, sysop, connect):
    fake_server.configure(health_status=500)
    await sync_to_async(register_worker)(fake_server, "openai", name="gpu1", realm="$CHAT", health_score=10)
    await sync_to_async(register_worker)(fake_server, "a1111", query_type="imagine", name="gpu2", realm="$CHAT")
    await look_at_realms()
    tab = await connect(sysop.guid)

    await health_round()

    assert [alert["type"] for alert in await alerts_until(tab, "worker_alert")] == ["worker_alert"]
    await assert_told_nothing(tab)


async def test_a_round_that_changes_nothing_tells_sysops_nothing(fake_server, chat_worker, sysop, connect):
    fake_server.configure(health_status=500)
    await sync_to_async(chat_worker)(health_score=10)
    await look_at_realms()
    tab = await connect(sysop.guid)
    await health_round()
    await alerts_until(tab, "realm_alert")

    await health_round()

    await assert_told_nothing(tab)


async def test_realms_that_start_with_no_worker_are_reported_once(default_realms, sysop, connect):
    tab = await connect(sysop.guid)

    await health_round()
    alerts = [await tab.receive() for _ in default_realms]
    await health_round()

    assert sorted(alert["realm"] for alert in alerts) == sorted(realm.name for realm in default_realms.values())
    assert {(alert["type"], alert["state"]) for alert in alerts} == {("realm_alert", "no_healthy_worker")}
    await assert_told_nothing(tab)


async def test_a_user_made_sysop_is_told_from_then_on_and_no_longer_once_unmade(fake_server, chat_worker, alice, connect):
    fake_server.configure(health_status=500)
    await sync_to_async(chat_worker)(health_score=10)
    tab = await connect(alice.guid)
    await sync_to_async(set_sysop)(alice.guid, True, acting_user=None)
    await tab.receive_until("user_info")

    await health_round()
    told = await alerts_until(tab, "worker_alert")
    await sync_to_async(set_sysop)(alice.guid, False, acting_user=None)
    await tab.receive_until("user_info")
    fake_server.configure(health_status=200)
    await health_round()

    assert [alert["state"] for alert in told] == ["blacklisted"]
    await assert_told_nothing(tab)
