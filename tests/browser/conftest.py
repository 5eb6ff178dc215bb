"""A live broker (daphne and a realm worker against the test databases, the fake model server
behind every realm) and headless Chromium driving it through Playwright.

Chromium is Debian's package (`apt-get install chromium`, which `.ci/run` does); Playwright's
own browser download cannot work here, so it is launched by its `executable_path`. Every
wait is on a condition with a generous timeout, never a fixed sleep: the box is loaded.
"""
import concurrent.futures
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from django.db import connections
from playwright.sync_api import expect, sync_playwright

from conftest import PROJECT_DIR, make_user, worker_environment
from realms.management.commands.run_broker import daphne_command
from tests.test_live_broker import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = PROJECT_DIR / "docs" / "screenshots"
# Seconds a browser assertion waits for its condition on a loaded 2-core box.
PATIENCE = 30
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

expect.set_options(timeout=PATIENCE * 1000)


class LiveBroker:
    """daphne serving the page, /ws and the admin on a free loopback port; restartable on that port."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {name: value for name, value in worker_environment().items() if name != ASYNC_UNSAFE}
        self.process = subprocess.Popen(
            daphne_command("127.0.0.1", self.port), cwd=PROJECT_DIR, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/favicon.ico", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("daphne did not come up")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def models(fake_servers, register_worker, transactional_db, default_realms):
    """Fake model servers behind every realm: chat streams (OpenAI format), vision answers
    (Ollama), imagine draws (AUTOMATIC1111). Returns the server handles by query type."""
    servers = {"chat": fake_servers(), "vision": fake_servers(), "imagine": fake_servers()}
    register_worker(servers["chat"], "openai", "chat", name="fake-chat")
    register_worker(servers["vision"], "ollama", "vision", name="fake-vision")
    register_worker(servers["imagine"], "a1111", "imagine", name="fake-imagine")
    return servers


@pytest.fixture
def broker(models, start_worker, monkeypatch):
    """A running broker: one concurrent realm worker serving every realm, and daphne.

    Its model calls may take 30 s (the unit tests' 3 s would fail a query whenever the box
    is busy, and the reconnect test keeps an answer coming while daphne restarts)."""
    monkeypatch.setenv("MODEL_READ_TIMEOUT", "30")
    start_worker("--concurrency", "16", "--shutdown-grace", "5")
    live = LiveBroker()
    live.start()
    yield live
    live.stop()


# Playwright's sync API keeps an event loop on the test's thread, so Django would refuse the
# test's own (synchronous, one-at-a-time) database calls as if they came from async code.
ASYNC_UNSAFE = "DJANGO_ALLOW_ASYNC_UNSAFE"


@pytest.fixture
def browser(broker, monkeypatch):
    monkeypatch.setenv(ASYNC_UNSAFE, "true")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def open_page(browser, broker):
    """Open the users' page (or `path`) in a fresh browser profile, optionally as a known user."""
    contexts = []

    def open_as(user=None, *, path: str = "/", viewport: dict = DESKTOP, color_scheme: str = "light"):
        context = browser.new_context(viewport=viewport, color_scheme=color_scheme)
        contexts.append(context)
        if user is not None:
            context.add_cookies([{"name": "user_guid", "value": user.guid, "url": broker.url}])
        page = context.new_page()
        page.goto(broker.url + path)
        if path == "/":
            expect(page.locator("#status")).to_have_text("connected")
        return page

    yield open_as
    for context in contexts:
        context.close()


@pytest.fixture
def sysop_user(transactional_db):
    return make_user("the-sysop", is_sysop=True)


def off_the_browsers_loop(function, *args, **kwargs):
    """Run an action from a browser test on a thread of its own: its pushes go out through
    `async_to_sync`, which refuses to run on the thread that holds Playwright's event loop."""
    def run():
        try:
            return function(*args, **kwargs)
        finally:
            connections.close_all()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def screenshot(page, name: str) -> Path:
    """Save the page's screenshot as docs/screenshots/<name>.png (shown in the README)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
