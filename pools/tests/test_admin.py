"""The pools admin: live member state on the change list, and the same validation as the API."""
import pytest

from pools import actions, state
from pools.models import PoolAlias, Worker

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat_pool(fake_server, register_worker):
    register_worker(fake_server, name="alpha")
    register_worker(fake_server, name="beta")
    return actions.create_pool("$CHAT", query_type="chat", members=["alpha", "beta"], strategy="health")


def add_form(**fields) -> dict:
    form = {
        "name": "$NEW", "realm": "", "query_type": "chat", "strategy": "auto",
        "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0",
        "memberships-MIN_NUM_FORMS": "1", "memberships-MAX_NUM_FORMS": "1000",
    }
    form.update(fields)
    return form


def test_pool_change_list_shows_members_live_state(admin_client, chat_pool):
    lease = state.acquire_lease("alpha", cap=0, ttl=60)

    page = admin_client.get("/admin/pools/poolalias/").content.decode()

    assert "alpha: 100 · 1 · - · 0<br>beta: 100 · 0 · - · 0</td>" in page
    state.release_lease("alpha", lease)


def test_pool_change_list_shows_the_runtime_score_and_blacklist(admin_client, chat_pool):
    state.change_health("alpha", -100)
    state.change_health("beta", -25)

    page = admin_client.get("/admin/pools/poolalias/").content.decode()

    assert "alpha: 0 · 0 · - · 0 · blacklisted<br>beta: 75 · 0 · - · 0</td>" in page


def test_worker_change_list_shows_the_runtime_health_score(admin_client, chat_pool):
    state.change_health("beta", -37.5)

    page = admin_client.get("/admin/pools/worker/").content.decode()

    assert '<td class="field-health">62.5</td>' in page


def test_worker_change_list_renders_live_columns(admin_client, chat_pool):
    page = admin_client.get("/admin/pools/worker/")

    assert page.status_code == 200
    assert "in flight" in page.content.decode().lower()


def test_admin_refuses_a_pool_without_members(admin_client, chat_pool):
    response = admin_client.post("/admin/pools/poolalias/add/", add_form())

    assert response.status_code == 200
    assert "Please submit at least 1 form" in response.content.decode()
    assert not PoolAlias.objects.filter(name="$NEW").exists()


def test_admin_refuses_a_member_of_the_wrong_type(admin_client, chat_pool, fake_server, register_worker):
    painter = register_worker(fake_server, "a1111", query_type="imagine", name="painter")
    form = add_form(**{"memberships-TOTAL_FORMS": "1", "memberships-0-worker": str(painter.pk), "memberships-0-weight": "1"})

    response = admin_client.post("/admin/pools/poolalias/add/", form)

    assert "painter serves imagine, but $NEW is a chat pool." in response.content.decode()
    assert not PoolAlias.objects.filter(name="$NEW").exists()


def test_admin_refuses_a_bad_alias_name(admin_client, chat_pool):
    alpha = chat_pool.memberships.get(worker__name="alpha").worker
    form = add_form(name="new", **{"memberships-TOTAL_FORMS": "1", "memberships-0-worker": str(alpha.pk), "memberships-0-weight": "1"})

    response = admin_client.post("/admin/pools/poolalias/add/", form)

    assert "A pool alias is $ followed by capital letters" in response.content.decode()


def test_admin_saves_a_pool_with_its_members_and_weights(admin_client, chat_pool):
    alpha = chat_pool.memberships.get(worker__name="alpha").worker
    form = add_form(**{"memberships-TOTAL_FORMS": "1", "memberships-0-worker": str(alpha.pk), "memberships-0-weight": "3"})

    response = admin_client.post("/admin/pools/poolalias/add/", form)

    assert response.status_code == 302
    pool = PoolAlias.objects.get(name="$NEW")
    assert list(pool.memberships.values_list("worker__name", "weight")) == [("alpha", 3)]


def test_admin_removes_a_member_marked_for_deletion(admin_client, chat_pool):
    seats = {seat.worker.name: seat for seat in chat_pool.memberships.select_related("worker")}
    form = add_form(name="$CHAT", strategy="health", **{
        "memberships-TOTAL_FORMS": "2", "memberships-INITIAL_FORMS": "2",
        "memberships-0-id": str(seats["alpha"].pk), "memberships-0-pool": str(chat_pool.pk),
        "memberships-0-worker": str(seats["alpha"].worker.pk), "memberships-0-weight": "1",
        "memberships-1-id": str(seats["beta"].pk), "memberships-1-pool": str(chat_pool.pk),
        "memberships-1-worker": str(seats["beta"].worker.pk), "memberships-1-weight": "1", "memberships-1-DELETE": "on",
    })

    response = admin_client.post(f"/admin/pools/poolalias/{chat_pool.pk}/change/", form)

    assert response.status_code == 302
    assert list(chat_pool.memberships.values_list("worker__name", flat=True)) == ["alpha"]


def test_admin_saves_a_workers_specializations(admin_client, chat_pool):
    alpha = Worker.objects.get(name="alpha")
    form = {
        "name": "alpha", "address": alpha.address, "query_type": "chat", "wire_format": alpha.wire_format,
        "model": alpha.model, "api_key": "", "realm": "", "health_score": "100", "max_concurrency": "2",
        "specializations-TOTAL_FORMS": "1", "specializations-INITIAL_FORMS": "0",
        "specializations-MIN_NUM_FORMS": "0", "specializations-MAX_NUM_FORMS": "1000",
        "specializations-0-topic": "code", "specializations-0-keywords": '["python", "django"]',
    }

    response = admin_client.post(f"/admin/pools/worker/{alpha.pk}/change/", form)

    assert response.status_code == 302
    alpha.refresh_from_db()
    assert alpha.max_concurrency == 2
    assert list(alpha.specializations.values_list("topic", "keywords")) == [("code", ["python", "django"])]


def test_admin_deletes_selected_pools(admin_client, chat_pool):
    response = admin_client.post(
        "/admin/pools/poolalias/", {"action": "delete_selected", "_selected_action": [chat_pool.pk], "post": "yes"}
    )

    assert response.status_code == 302
    assert not PoolAlias.objects.exists()


def test_a_worker_blacklisted_by_health_says_so_in_its_health_column(admin_client, chat_pool):
    state.change_health("beta", -100)

    page = admin_client.get("/admin/pools/worker/").content.decode()

    assert '<td class="field-health"><span title="score 0">blacklisted by health</span></td>' in page


def test_blacklist_and_restore_actions_change_the_operators_switch(admin_client, chat_pool):
    alpha = Worker.objects.get(name="alpha")

    admin_client.post("/admin/pools/worker/", {"action": "blacklist", "_selected_action": [alpha.pk]})
    assert Worker.objects.get(name="alpha").is_blacklisted
    assert "blacklisted by operator" in admin_client.get("/admin/pools/worker/").content.decode()

    admin_client.post("/admin/pools/worker/", {"action": "restore", "_selected_action": [alpha.pk]})
    assert not Worker.objects.get(name="alpha").is_blacklisted


def test_check_health_now_probes_the_selected_workers(admin_client, chat_pool, fake_server):
    state.change_health("alpha", -30)
    fake_server.configure(health_status=500)

    response = admin_client.post(
        "/admin/pools/worker/", {"action": "check_health_now", "_selected_action": [Worker.objects.get(name="alpha").pk]},
        follow=True,
    )

    assert [str(message) for message in response.context["messages"]] == ["alpha: answered HTTP 500"]
    assert state.health_of(["alpha", "beta"])["alpha"].score == 60
    assert state.health_of(["alpha", "beta"])["beta"].score == 100
