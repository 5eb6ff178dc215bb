"""The realm admin API: staff with realm permissions manage realms, a sysop's cookie reads
them; bad input changes nothing. (Who may do what: tests/test_doors.py.)"""
import pytest
from django.contrib.auth.models import User as StaffUser
from rest_framework.test import APIClient

from realms.models import Realm, RealmBackup

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def as_sysop(sysop, default_realms):
    client = APIClient()
    client.cookies["user_guid"] = sysop.guid
    return client


@pytest.fixture
def as_operator(operator, default_realms):
    client = APIClient()
    client.force_authenticate(operator)
    return client


def realm_names() -> list[str]:
    return list(Realm.objects.values_list("name", flat=True))


def test_sysop_lists_realms_with_workers_pools_and_metrics(as_sysop, register_worker, fake_server):
    register_worker(fake_server, "openai", query_type="chat", name="chat-1", realm="$CHAT")

    response = as_sysop.get("/api/realms/")

    assert response.status_code == 200
    realms = {realm["name"]: realm for realm in response.json()["realms"]}
    assert set(realms) == {"$CHAT", "$VISION", "$IMAGINE", "$SPEECH"}
    chat = realms["$CHAT"]
    assert chat["primary_query_type"] == "chat"
    assert [worker["name"] for worker in chat["workers"]] == ["chat-1"]
    assert chat["pools"] == []
    assert chat["metrics"]["queries_processed"] == 0
    assert chat["metrics"]["workers"] == 1
    assert response.json()["summary"]["realms"] == 4


def test_a_realm_shows_its_workers_runtime_health_and_counts_only_the_healthy(as_sysop, register_worker, fake_server):
    register_worker(fake_server, "openai", query_type="chat", name="chat-1", realm="$CHAT", health_score=80)
    register_worker(fake_server, "openai", query_type="chat", name="chat-2", realm="$CHAT", health_score=0)

    chat = {realm["name"]: realm for realm in as_sysop.get("/api/realms/").json()["realms"]}["$CHAT"]

    shown = {worker["name"]: (worker["health_score"], worker["is_blacklisted"]) for worker in chat["workers"]}
    assert shown == {"chat-1": (80, False), "chat-2": (0, True)}
    assert chat["metrics"]["workers"] == 1


def test_staff_member_with_realm_permissions_may_use_the_api(as_operator):
    assert as_operator.get("/api/realms/").status_code == 200


@pytest.mark.parametrize("who", ["anonymous", "plain user", "staffless login"])
def test_others_are_refused(who, alice, default_realms):
    client = APIClient()
    if who == "plain user":
        client.cookies["user_guid"] = alice.guid
    if who == "staffless login":
        client.force_authenticate(StaffUser.objects.create_user("someone", password="pw"))

    response = client.post("/api/realms/", {"name": "$NEW", "primary_query_type": "chat"}, format="json")

    assert response.status_code in (401, 403)
    assert "$NEW" not in realm_names()


def test_creating_a_realm_for_a_type_routes_that_type_to_it(as_operator):
    response = as_operator.post("/api/realms/", {"name": "$CHAT_EU", "primary_query_type": "chat", "queue_limit": 50}, format="json")

    assert response.status_code == 201
    assert response.json()["primary_query_type"] == "chat"
    assert Realm.objects.get(query_type="chat").name == "$CHAT_EU"
    assert Realm.objects.get(name="$CHAT").query_type is None
    assert Realm.objects.get(name="$CHAT_EU").queue_limit == 50


def test_a_new_realm_given_no_queue_limit_takes_the_queue_limit_setting(as_operator, settings):
    settings.RENTAHAL_QUEUE_LIMIT = 25

    as_operator.post("/api/realms/", {"name": "$CHAT_EU", "primary_query_type": "chat"}, format="json")

    assert Realm.objects.get(name="$CHAT_EU").queue_limit == 25


def test_update_changes_limits_and_backups(as_operator):
    as_operator.post("/api/realms/", {"name": "$IMAGINE_2", "primary_query_type": "imagine"}, format="json")
    as_operator.post("/api/realms/", {"name": "$IMAGINE", "primary_query_type": "imagine"}, format="json")

    response = as_operator.patch(
        "/api/realms/$IMAGINE/", {"max_workers": 3, "backups": {"imagine": ["$IMAGINE_2"]}}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert response.json()["backups"] == {"imagine": ["$IMAGINE_2"]}
    assert Realm.objects.get(name="$IMAGINE").max_workers == 3


def test_a_backup_only_realm_given_a_type_takes_its_routing(as_operator):
    as_operator.post("/api/realms/", {"name": "$SPEECH_2", "primary_query_type": "speech"}, format="json")

    response = as_operator.patch("/api/realms/$SPEECH/", {"primary_query_type": "speech"}, format="json")

    assert response.status_code == 200
    assert Realm.objects.get(query_type="speech").name == "$SPEECH"
    assert Realm.objects.get(name="$SPEECH_2").query_type is None


def test_deleting_a_backup_only_realm_works(as_operator):
    as_operator.post("/api/realms/", {"name": "$CHAT_EU", "primary_query_type": "chat"}, format="json")

    response = as_operator.delete("/api/realms/$CHAT/")

    assert response.status_code == 204
    assert "$CHAT" not in realm_names()


def test_deleting_a_primary_realm_is_refused_and_changes_nothing(as_operator):
    response = as_operator.delete("/api/realms/$CHAT/")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "realm_is_primary"
    assert "primary realm for chat" in response.json()["error"]["message"]
    assert Realm.objects.get(name="$CHAT").query_type == "chat"


def test_a_backup_chain_that_loops_is_refused_and_changes_nothing(as_operator):
    as_operator.post("/api/realms/", {"name": "$IMAGINE_2", "primary_query_type": "imagine"}, format="json")
    as_operator.post("/api/realms/", {"name": "$IMAGINE", "primary_query_type": "imagine"}, format="json")
    as_operator.patch("/api/realms/$IMAGINE/", {"backups": {"imagine": ["$IMAGINE_2"]}}, format="json")

    response = as_operator.patch("/api/realms/$IMAGINE_2/", {"backups": {"imagine": ["$IMAGINE"]}}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "backup_loop"
    assert "$IMAGINE_2 → $IMAGINE → $IMAGINE_2" in response.json()["error"]["message"]
    assert list(RealmBackup.objects.values_list("realm__name", "backup__name")) == [("$IMAGINE", "$IMAGINE_2")]


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"name": "$NEW"}, "primary_query_type", "needs a primary query type"),
        ({"name": "$NEW", "primary_query_type": None}, "primary_query_type", "needs a primary query type"),
        ({"name": "$NEW", "primary_query_type": "telepathy"}, "primary_query_type", "not a valid choice"),
        ({"name": "lowercase", "primary_query_type": "chat"}, "name", "$ followed by capital letters"),
        ({"name": "$NEW", "primary_query_type": "chat", "backups": {"chat": ["$NOPE"]}}, "backups", "Unknown realm(s): $NOPE"),
        ({"name": "$NEW", "primary_query_type": "chat", "backups": {"chat": ["$NEW"]}}, "backups", "own backup"),
        ({"name": "$NEW", "primary_query_type": "chat", "min_workers": 5, "max_workers": 2}, "min_workers", "must not exceed"),
    ],
)
def test_bad_realm_input_is_refused_and_changes_nothing(as_operator, payload, field, message):
    before = list(Realm.objects.values_list("name", "query_type"))

    response = as_operator.post("/api/realms/", payload, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert message in " ".join(response.json()["error"]["fields"][field])
    assert list(Realm.objects.values_list("name", "query_type")) == before


def test_a_primary_realm_cannot_drop_its_type(as_operator):
    response = as_operator.patch("/api/realms/$CHAT/", {"primary_query_type": "imagine"}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "leave chat queries with no realm" in response.json()["error"]["message"]
    assert Realm.objects.get(name="$CHAT").query_type == "chat"
    assert Realm.objects.get(name="$IMAGINE").query_type == "imagine"


def test_unknown_realm_is_not_found(as_operator):
    response = as_operator.get("/api/realms/$NOPE/")

    assert response.status_code == 404
    assert response.json() == {"error": {"code": "unknown_realm", "message": "Unknown realm '$NOPE'."}}
