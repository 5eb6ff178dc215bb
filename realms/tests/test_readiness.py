"""/health and /ready, as a load balancer or a container platform asks them."""
import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)


def test_health_answers_while_the_process_runs():
    response = Client().get("/health")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_ready_says_which_primary_realm_has_no_serving_worker(default_realms, fake_server, register_worker):
    register_worker(fake_server, query_type="chat")
    response = Client().get("/ready")

    body = response.json()
    assert response.status_code == 503 and body["status"] == "not ready"
    assert body["checks"]["redis"] == "ok" and set(body["checks"]["databases"].values()) == {"ok"}
    assert body["checks"]["realms"]["$CHAT"] == "1 serving worker(s)"
    assert body["checks"]["realms"]["$SPEECH"] == "no serving worker"


def test_ready_once_every_primary_realm_has_a_worker(default_realms, fake_server, register_worker):
    for query_type in ("chat", "vision", "imagine", "speech"):
        register_worker(fake_server, query_type=query_type)

    assert Client().get("/ready").status_code == 200


def test_a_blacklisted_worker_does_not_make_its_realm_ready(default_realms, fake_server, register_worker):
    for query_type in ("chat", "vision", "imagine"):
        register_worker(fake_server, query_type=query_type)
    register_worker(fake_server, query_type="speech", health_score=0)

    assert Client().get("/ready").json()["checks"]["realms"]["$SPEECH"] == "no serving worker"
