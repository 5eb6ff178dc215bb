"""The operators' consoles in the admin, in a real browser: the live pool graph and the live
dashboard."""
import pytest
from playwright.sync_api import expect

from accounts.actions.queries import Failure, accept_query, fail_queries
from accounts.actions.users import get_or_create_user
from pools import actions as pools
from pools.models import Worker
from tests.browser.conftest import DESKTOP, off_the_browsers_loop, screenshot
from tests.browser.test_users_page import answer_card, ask
from tests.shard_helpers import guid_with_prefix

pytestmark = pytest.mark.django_db(transaction=True)


def log_in(open_page, staff, path: str, password: str = "pw"):
    page = open_page(path=f"/admin/login/?next={path}", viewport=DESKTOP)
    page.get_by_label("Username").fill(staff.username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{page.url.split('/admin/')[0]}{path}")
    return page


def test_pool_graph_draws_every_worker_and_turns_a_blacklisted_one_black(open_page, operator, models):
    off_the_browsers_loop(pools.create_pool, "$CHAT", query_type="chat", members=["fake-chat"])
    page = log_in(open_page, operator, "/admin/pools/worker/graph/")
    graph = page.get_by_role("img", name="Pool graph")

    for name in ("fake-chat", "fake-vision", "fake-imagine"):
        expect(graph.locator(f'[data-node="worker:{name}"]')).to_have_attribute("data-colour", "green")
    expect(graph.locator("[data-node^='pool:']")).to_have_count(1)
    expect(graph.locator("line")).to_have_count(1)

    worker = Worker.objects.get(name="fake-chat")
    worker.is_blacklisted = True
    off_the_browsers_loop(pools.save_worker, worker, acting_user=operator)

    expect(graph.locator('[data-node="worker:fake-chat"]')).to_have_attribute("data-colour", "black")
    expect(graph.locator('[data-node="worker:fake-vision"]')).to_have_attribute("data-colour", "green")
    screenshot(page, "pool-graph")


def test_dashboard_numbers_move_under_load(open_page, operator):
    dashboard = log_in(open_page, operator, "/admin/realms/realm/dashboard/")
    expect(dashboard.get_by_role("status")).to_have_text("live")
    processed = dashboard.locator('[data-realm="$CHAT"] [data-figure="queries_processed"]')
    expect(processed).to_have_text("0")

    users_page = open_page()
    for number in range(5):
        ask(users_page, f"load {number}")
    for number in range(5):
        expect(answer_card(users_page, f"load {number}")).to_have_attribute("data-status", "done")

    expect(processed).to_have_text("5")
    expect(dashboard.locator('[data-realm="$CHAT"] [data-figure="p50"]')).not_to_have_text("–")
    expect(dashboard.locator('[data-workers="idle"] strong')).to_have_text("3")
    screenshot(dashboard, "dashboard")


@pytest.mark.parametrize("path", ["/admin/pools/worker/", "/admin/pools/poolalias/", "/admin/accounts/query/"])
def test_admin_lists_with_live_columns_fit_a_1280_pixel_screen(open_page, admin_user, models, path):
    off_the_browsers_loop(pools.create_pool, "$CHAT", query_type="chat", members=["fake-chat"])
    # A failed query with a long prompt on the first shard, the one the query list opens on.
    user = off_the_browsers_loop(get_or_create_user, guid_with_prefix("00"))
    query = off_the_browsers_loop(
        accept_query, user.guid, query_type="chat", prompt="a rather long question " * 20, model_type="worker_node",
        model_name="", image="", realm="$CHAT",
    )
    off_the_browsers_loop(fail_queries, [Failure(query.pk, "no chat worker answered it in time " * 5)])
    page = log_in(open_page, admin_user, path, password="password")

    expect(page.locator("#changelist")).to_be_visible()
    expect(page.locator("#result_list tbody tr")).not_to_have_count(0)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
