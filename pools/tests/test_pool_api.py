"""The pools API at /api/pools/: creating aliases (and refusing bad ones), live member state,
changing a strategy, and the A/B comparison."""
import time

import pytest

from pools import actions, state
from pools.models import PoolAlias, SelectionOutcome

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat_workers(fake_server, register_worker):
    return [register_worker(fake_server, name=name) for name in ("alpha", "beta")]


def create(client, **fields):
    body = {"name": "$CHAT", "query_type": "chat", "strategy": "round_robin", "members": ["alpha", "beta"], **fields}
    return client.post("/api/pools/", body, content_type="application/json")


def test_staff_creates_a_pool_and_sees_its_members(admin_client, chat_workers):
    response = create(admin_client)

    assert response.status_code == 201
    body = response.json()
    assert (body["name"], body["strategy"]) == ("$CHAT", "round_robin")
    assert [member["name"] for member in body["members"]] == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"name": "chat"}, "name", "A pool alias is $ followed by capital letters"),
        ({"name": "$chat"}, "name", "A pool alias is $ followed by capital letters"),
        ({"strategy": "fastest"}, "strategy", '"fastest" is not a strategy'),
        ({"members": []}, "members", "A pool needs at least one member."),
        ({"members": ["alpha", "ghost"]}, "members", "No worker named ghost."),
        ({"members": ["alpha", "painter"]}, "members", "these workers serve another type: painter (imagine)"),
    ],
    ids=["lowercase-no-dollar", "lowercase", "unknown-strategy", "empty", "unknown-member", "wrong-type-member"],
)
def test_a_bad_pool_gets_a_clear_validation_error(fields, field, message, admin_client, chat_workers, fake_server, register_worker):
    register_worker(fake_server, "a1111", query_type="imagine", name="painter")

    response = create(admin_client, **fields)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert message in " ".join(error["fields"][field])
    assert not PoolAlias.objects.exists()


def test_an_alias_is_unique_per_realm_but_may_repeat_across_realms(admin_client, chat_workers):
    assert create(admin_client, realm="$CHAT").status_code == 201
    again = create(admin_client, realm="$CHAT")
    elsewhere = create(admin_client, realm="$OTHER")

    assert again.status_code == 400
    assert "already exists" in str(again.json())
    assert elsewhere.status_code == 201


def test_pool_list_shows_each_members_live_state(admin_client, chat_workers):
    create(admin_client)
    lease = state.acquire_lease("alpha", cap=0, ttl=60, choice=state.Choice(PoolAlias.objects.get().id))
    state.set_cooldown("beta", until=time.time() + 30, kind="server", reason="fake failure (HTTP 500)")

    members = {member["name"]: member for member in admin_client.get("/api/pools/").json()[0]["members"]}

    assert (members["alpha"]["in_flight"], members["alpha"]["chosen"], members["alpha"]["cooldown_until"]) == (1, 1, None)
    assert members["beta"]["cooldown_until"] is not None
    assert members["beta"]["cooldown_reason"] == "fake failure (HTTP 500)"
    assert members["beta"]["health_score"] == 100
    state.release_lease("alpha", lease)


def test_staff_changes_a_pools_strategy(admin_client, chat_workers):
    pool_id = create(admin_client).json()["id"]

    response = admin_client.patch(f"/api/pools/{pool_id}/", {"strategy": "least_busy"}, content_type="application/json")

    assert response.status_code == 200
    assert PoolAlias.objects.get().strategy == "least_busy"


def test_workers_endpoint_lists_every_worker_with_state(admin_client, chat_workers):
    names = [row["name"] for row in admin_client.get("/api/pools/workers/").json()]

    assert names == ["alpha", "beta"]


def test_workers_endpoint_shows_the_runtime_health_and_who_blacklisted(admin_client, chat_workers):
    state.change_health("alpha", -100)
    beta = chat_workers[1]
    beta.is_blacklisted = True
    beta.save(update_fields=["is_blacklisted"])
    state.change_health("beta", -30)

    rows = {row["name"]: row for row in admin_client.get("/api/pools/workers/").json()}

    assert (rows["alpha"]["health_score"], rows["alpha"]["is_blacklisted"], rows["alpha"]["blacklisted_by"]) == (0, True, "health")
    assert (rows["beta"]["health_score"], rows["beta"]["is_blacklisted"], rows["beta"]["blacklisted_by"]) == (70, True, "operator")


def test_the_api_is_for_staff_only(client, chat_workers):
    assert client.get("/api/pools/").status_code in (401, 403)


def test_compare_reports_latency_errors_and_recovery_of_two_aliases(admin_client, chat_workers):
    create(admin_client, name="$CHAT_A", strategy="round_robin")
    create(admin_client, name="$CHAT_B", strategy="least_busy")
    record = SelectionOutcome.objects.create
    record(pool="$CHAT_A", worker="alpha", strategy="round_robin", result="ok", duration=0.2)
    record(pool="$CHAT_A", worker="alpha", strategy="round_robin", result="ok", duration=0.4)
    record(pool="$CHAT_B", worker="beta", strategy="least_busy", result="server", duration=0.1)
    record(pool="$CHAT_B", worker="beta", strategy="least_busy", result="ok", duration=0.3)

    report = admin_client.get("/api/pools/compare/", {"a": "$CHAT_A", "b": "$CHAT_B"}).json()

    assert (report["a"]["attempts"], report["a"]["error_rate"], report["a"]["latency_p50"]) == (2, 0.0, 0.2)
    assert (report["b"]["error_rate"], report["b"]["recoveries"]) == (0.5, 1)
    assert report["b"]["recovery_mean"] >= 0


def test_compare_names_an_alias_that_does_not_exist(admin_client, chat_workers):
    create(admin_client, name="$CHAT_A")

    response = admin_client.get("/api/pools/compare/", {"a": "$CHAT_A", "b": "$NOPE"})

    assert response.status_code == 400
    assert "No pool alias named $NOPE" in str(response.json())


@pytest.mark.parametrize("hours", ["nan", "inf", "-inf", "-1", "0", "1e300", "soon"])
def test_compare_refuses_a_window_that_is_not_a_positive_number_of_hours(hours, admin_client, chat_workers):
    create(admin_client, name="$CHAT_A")
    create(admin_client, name="$CHAT_B")

    response = admin_client.get("/api/pools/compare/", {"a": "$CHAT_A", "b": "$CHAT_B", "hours": hours})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], list(error["fields"])) == ("invalid", ["hours"])


@pytest.mark.parametrize(("params", "field"), [({"a": "$CHAT_A\x00", "b": "$CHAT_B"}, "a"), ({"realm": "$CHAT\x00"}, "realm")])
def test_compare_refuses_a_nul_character_in_a_name(params, field, admin_client, chat_workers):
    create(admin_client, name="$CHAT_A")
    create(admin_client, name="$CHAT_B")

    response = admin_client.get("/api/pools/compare/", {"a": "$CHAT_A", "b": "$CHAT_B", **params})

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], list(error["fields"])) == ("invalid", [field])


def test_ensure_pool_is_idempotent_and_adds_missing_members(chat_workers):
    first = actions.ensure_pool("$CHAT", query_type="chat", realm="$CHAT", strategy="health", members=["alpha"])
    again = actions.ensure_pool("$CHAT", query_type="chat", realm="$CHAT", strategy="health", members=["alpha"])
    grown = actions.ensure_pool("$CHAT", query_type="chat", realm="$CHAT", strategy="health", members=["beta"])

    assert first.pk == again.pk == grown.pk
    assert sorted(grown.members.values_list("name", flat=True)) == ["alpha", "beta"]
