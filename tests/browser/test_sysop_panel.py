"""The sysop panel on the users' page, driven in a real browser: users listed from the
broker's `active_users` and `user_stats`, bans and terminations that reach the affected
user's own page, broadcasts, and workers added and removed."""
import time

import pytest
from playwright.sync_api import expect

from accounts.models import Query
from conftest import make_user
from pools.models import Worker
from tests.browser.conftest import PATIENCE, screenshot
from tests.browser.test_users_page import answer_card, ask

pytestmark = pytest.mark.django_db(transaction=True)


def user_row(page, nickname: str):
    return page.locator("#users-table tbody tr").filter(has=page.get_by_role("cell", name=nickname, exact=True))


def test_sysop_panel_lists_online_users_with_their_totals(open_page, sysop_user):
    alice = make_user("alice")
    make_user("bob")
    open_page(alice)
    ask(open_page(alice), "hello from alice")

    panel = open_page(sysop_user)

    expect(panel.get_by_role("region", name="Sysop panel")).to_be_visible()
    expect(user_row(panel, "alice").locator("td").nth(1)).to_have_text("●")
    expect(user_row(panel, "bob").locator("td").nth(1)).to_have_text("")
    expect(user_row(panel, "alice").locator("td").nth(2)).to_have_text("1")
    expect(panel.locator("#system-stats")).to_contain_text("online")
    screenshot(panel, "sysop-panel")


def test_a_user_sees_no_sysop_panel(open_page):
    page = open_page(make_user("carol"))

    expect(page.locator("#nickname")).to_have_text("carol")
    expect(page.get_by_role("region", name="Sysop panel")).to_be_hidden()


def test_sysop_bans_a_user_from_the_panel_and_the_users_page_says_so(open_page, sysop_user):
    alice = make_user("alice")
    users_page = open_page(alice)
    panel = open_page(sysop_user)

    user_row(panel, "alice").get_by_role("button", name="Ban alice").click()

    expect(users_page.locator("#notice")).to_contain_text("banned")
    expect(users_page.locator("#status")).to_contain_text("banned")
    expect(user_row(panel, "alice").locator("td").nth(4)).to_have_text("banned")

    user_row(panel, "alice").get_by_role("button", name="Unban alice").click()

    expect(users_page.locator("#status")).to_have_text("connected", timeout=PATIENCE * 2000)
    expect(users_page.locator("#notice")).to_be_hidden()


def test_sysop_terminates_a_users_running_query_and_its_model_call_stops(open_page, sysop_user, models):
    models["chat"].configure(hang=True)
    alice = make_user("alice")
    users_page = open_page(alice)
    panel = open_page(sysop_user)
    ask(users_page, "a question that never ends")
    deadline = time.monotonic() + PATIENCE
    while models["chat"].stats()["in_flight"] == 0:
        assert time.monotonic() < deadline, "the model call never started"
        time.sleep(0.1)

    user_row(panel, "alice").get_by_role("button", name="Terminate the queries of alice").click()

    card = answer_card(users_page, "a question that never ends")
    expect(card).to_have_attribute("data-status", "failed")
    expect(card.locator(".body")).to_have_text("Query failed: terminated by the sysop")
    expect(users_page.locator("#notice")).to_have_text("The sysop stopped your queries.")
    while models["chat"].stats()["in_flight"]:
        assert time.monotonic() < deadline + PATIENCE, "the model call went on after the termination"
        time.sleep(0.1)
    assert Query.objects.filter(user_id=alice.guid).get().cost == 0


def test_sysop_broadcast_reaches_every_users_page(open_page, sysop_user):
    users_page = open_page(make_user("alice"))
    panel = open_page(sysop_user)

    panel.get_by_label("Message to everyone").fill("Maintenance at noon")
    panel.get_by_role("button", name="Send to all").click()

    expect(users_page.locator("#sysop-message")).to_have_text("Sysop: Maintenance at noon")


def test_sysop_adds_and_removes_a_worker_from_the_panel(open_page, sysop_user, models):
    panel = open_page(sysop_user)
    form = panel.locator("#add-worker-form")

    form.get_by_label("Name").fill("second-chat")
    form.get_by_label("Address").fill(models["chat"].url)
    form.get_by_label("Format").select_option("openai")
    form.get_by_role("button", name="Add worker").click()

    row = panel.locator('#workers-table tr[data-worker="second-chat"]')
    expect(row).to_contain_text(models["chat"].url)
    assert Worker.objects.get(name="second-chat").wire_format == "openai"

    panel.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Remove worker second-chat").click()

    expect(row).to_have_count(0)
    assert not Worker.objects.filter(name="second-chat").exists()
