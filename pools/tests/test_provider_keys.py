"""Hosted providers' keys: given to a worker through the admin, the API or the sysop's frame,
or taken from the environment; never shown back, and a worker that could have none is refused."""
import pytest

from pools import actions
from pools.models import Worker

pytestmark = pytest.mark.django_db

SECRET = "sk-ant-api03-very-secret"


@pytest.fixture(autouse=True)
def no_keys_in_the_environment(settings):
    settings.RENTAHAL_ANTHROPIC_API_KEY = ""
    settings.RENTAHAL_HF_TOKEN = ""


def claude_worker(fake_server, **fields) -> Worker:
    return actions.add_worker(
        name="claude", address=fake_server.url, query_type="chat", wire_format="anthropic", model="claude-fake", **fields
    )


def worker_form(worker: Worker, **fields) -> dict:
    return {
        "name": worker.name, "address": worker.address, "query_type": worker.query_type, "wire_format": worker.wire_format,
        "model": worker.model, "api_key": "", "realm": "", "max_concurrency": "0",
        "specializations-TOTAL_FORMS": "0", "specializations-INITIAL_FORMS": "0",
        "specializations-MIN_NUM_FORMS": "0", "specializations-MAX_NUM_FORMS": "1000",
        **fields,
    }


@pytest.mark.parametrize(("wire_format", "variable"), [("anthropic", "ANTHROPIC_API_KEY"), ("huggingface", "HF_TOKEN")])
def test_a_hosted_worker_without_a_key_of_its_own_or_in_the_environment_is_refused(admin_client, fake_server, wire_format, variable):
    body = {"name": "hosted", "address": fake_server.url, "query_type": "chat", "wire_format": wire_format, "model": "m"}

    response = admin_client.post("/api/pools/workers/", body, content_type="application/json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "missing_provider_key"
    assert error["fields"]["api_key"] == [
        f"No API key for {wire_format}: give the worker its key, or set {variable} in the environment."
    ]
    assert not Worker.objects.exists()


def test_a_hosted_worker_may_take_its_key_from_the_environment(settings, fake_server):
    settings.RENTAHAL_ANTHROPIC_API_KEY = SECRET

    worker = claude_worker(fake_server)

    assert worker.api_key == ""


def test_an_anthropic_worker_needs_a_model_to_ask_for(admin_client, fake_server):
    body = {"name": "claude", "address": fake_server.url, "query_type": "chat", "wire_format": "anthropic", "api_key": SECRET}

    response = admin_client.post("/api/pools/workers/", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["error"]["fields"]["model"] == [
        "An anthropic worker needs the model to ask for, e.g. claude-sonnet-4-5."
    ]


def test_the_api_takes_a_key_and_never_answers_with_it(admin_client, fake_server):
    body = {
        "name": "claude", "address": fake_server.url, "query_type": "chat", "wire_format": "anthropic",
        "model": "claude-fake", "api_key": SECRET,
    }

    created = admin_client.post("/api/pools/workers/", body, content_type="application/json")
    listed = admin_client.get("/api/pools/workers/")

    assert created.status_code == 201
    assert Worker.objects.get(name="claude").api_key == SECRET
    assert SECRET not in created.content.decode()
    assert SECRET not in listed.content.decode()


def test_registering_again_without_a_key_keeps_the_stored_one(admin_client, fake_server):
    claude_worker(fake_server, api_key=SECRET)
    body = {"name": "claude", "address": fake_server.url, "query_type": "chat", "wire_format": "anthropic", "model": "claude-2"}

    response = admin_client.post("/api/pools/workers/", body, content_type="application/json")

    assert response.status_code == 201
    assert Worker.objects.values_list("model", "api_key").get(name="claude") == ("claude-2", SECRET)


def test_the_admin_never_renders_a_stored_key(admin_client, fake_server):
    worker = claude_worker(fake_server, api_key=SECRET)

    page = admin_client.get(f"/admin/pools/worker/{worker.pk}/change/").content.decode()

    assert SECRET not in page
    assert "A key is stored (not shown)." in page


def test_the_admin_keeps_a_key_left_blank_and_replaces_one_typed(admin_client, fake_server):
    worker = claude_worker(fake_server, api_key=SECRET)

    kept = admin_client.post(f"/admin/pools/worker/{worker.pk}/change/", worker_form(worker, max_concurrency="4"))
    worker.refresh_from_db()
    assert (kept.status_code, worker.max_concurrency, worker.api_key) == (302, 4, SECRET)

    replaced = admin_client.post(f"/admin/pools/worker/{worker.pk}/change/", worker_form(worker, api_key="sk-new"))
    worker.refresh_from_db()
    assert (replaced.status_code, worker.api_key) == (302, "sk-new")


def test_the_admin_forgets_a_key_only_when_asked_and_then_wants_one(admin_client, settings, fake_server):
    worker = claude_worker(fake_server, api_key=SECRET)

    refused = admin_client.post(f"/admin/pools/worker/{worker.pk}/change/", worker_form(worker, forget_api_key="on"))
    worker.refresh_from_db()
    assert (refused.status_code, worker.api_key) == (200, SECRET)
    assert "No API key for anthropic" in refused.content.decode()

    settings.RENTAHAL_ANTHROPIC_API_KEY = "sk-env"
    forgotten = admin_client.post(f"/admin/pools/worker/{worker.pk}/change/", worker_form(worker, forget_api_key="on"))
    worker.refresh_from_db()
    assert (forgotten.status_code, worker.api_key) == (302, "")
