"""The pools admin: live member state on the change list, and the same validation as the API."""
import pytest

from pools import actions, state
from pools.models import PoolAlias

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

    assert "alpha: 100, 1 in flight" in page
    assert "beta: 100, 0 in flight" in page
    state.release_lease("alpha", lease)


def test_pool_change_list_shows_the_runtime_score_and_blacklist(admin_client, chat_pool):
    state.change_health("alpha", -100)
    state.change_health("beta", -25)

    page = admin_client.get("/admin/pools/poolalias/").content.decode()

    assert "alpha: 0, 0 in flight, -, chosen 0, blacklisted;" in page
    assert "beta: 75, 0 in flight, -, chosen 0<" in page


def test_worker_change_list_shows_the_runtime_health_score(admin_client, chat_pool):
    state.change_health("beta", -37.5)

    page = admin_client.get("/admin/pools/worker/").content.decode()

    assert '<td class="field-health_score">62.5</td>' in page


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
