"""The users' page at / in a real browser: asking, streaming, totals, history, images,
chunked uploads, reconnecting, model choice, reading comfort and safe answers."""
import base64
import random
import re
import struct
import time
import zlib

import pytest
from playwright.sync_api import expect

from accounts.models import Query
from pools import actions as pools
from tests.browser.conftest import DESKTOP, PATIENCE, PHONE, off_the_browsers_loop, screenshot

pytestmark = pytest.mark.django_db(transaction=True)


def answer_card(page, prompt: str):
    return page.locator("article.answer").filter(has=page.locator(".prompt", has_text=prompt))


def ask(page, prompt: str, query_type: str = "chat") -> None:
    page.get_by_label(query_type.capitalize(), exact=True).check()
    page.get_by_label("Prompt").fill(prompt)
    page.get_by_label("Prompt").press("Control+Enter")


def wait_until_finished(prompt: str) -> None:
    """Wait for the query's row to be finished, as the realm worker records it."""
    deadline = time.monotonic() + PATIENCE
    while not Query.objects.filter(prompt=prompt, status__in=Query.FINISHED).count():
        assert time.monotonic() < deadline, f"{prompt!r} did not finish"
        time.sleep(0.1)


def noisy_png(side: int) -> bytes:
    """Return a PNG of random pixels (it does not compress), `side` pixels square."""
    noise = random.Random(side)
    rows = b"".join(b"\x00" + noise.randbytes(side * 3) for _ in range(side))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b"")


def test_chat_answer_streams_updates_the_cost_line_and_survives_a_reload(open_page):
    page = open_page()
    expect(page.locator("#query-count")).to_have_text("0")

    ask(page, "What is the capital of France?")
    card = answer_card(page, "What is the capital of France?")

    expect(card.locator(".body")).to_have_text("echo: What is the capital of France?")
    expect(card).to_have_attribute("data-status", "done")
    expect(card).to_have_attribute("data-streamed", "1")
    expect(card.locator(".cost")).to_contain_text("fake-chat")
    expect(page.locator("#query-count")).to_have_text("1")
    expect(page.locator("#total-cost")).not_to_have_text("0.0000")
    cost_line = page.locator("#totals").inner_text()

    page.reload()

    expect(page.locator("#status")).to_have_text("connected")
    expect(answer_card(page, "What is the capital of France?").locator(".body")).to_have_text("echo: What is the capital of France?")
    expect(answer_card(page, "What is the capital of France?").locator(".cost")).to_contain_text("fake-chat")
    expect(page.locator("#totals")).to_have_text(cost_line)


def test_history_lists_the_newest_query_first(open_page):
    page = open_page()
    for prompt in ("first question", "second question"):
        ask(page, prompt)
        expect(answer_card(page, prompt)).to_have_attribute("data-status", "done")

    page.reload()

    expect(page.locator("article.answer .prompt")).to_have_text(["second question", "first question"])


def test_imagine_query_shows_the_image_inline_to_enlarge_and_download(open_page):
    page = open_page()

    ask(page, "a lighthouse at dusk", "imagine")
    image = answer_card(page, "a lighthouse at dusk").locator("img.result-image")

    expect(image).to_be_visible()
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", image.element_handle())
    expect(answer_card(page, "a lighthouse at dusk").get_by_role("link", name="Download")).to_have_attribute("download", re.compile(r"rentahal-.*\.png"))
    image.click()
    expect(page.locator("#lightbox")).to_be_visible()
    expect(page.locator("#lightbox-image")).to_have_attribute("src", image.get_attribute("src"))


def test_vision_upload_over_one_mib_goes_up_in_chunks_with_progress(open_page, tmp_path):
    picture = tmp_path / "noise.png"
    picture.write_bytes(noisy_png(700))
    size = picture.stat().st_size
    assert len(base64.b64encode(picture.read_bytes())) > 1024 * 1024
    page = open_page()
    page.evaluate("""() => {
        window.sentChunks = 0;
        const send = WebSocket.prototype.send;
        WebSocket.prototype.send = function (data) {
            if (JSON.parse(data).type === "vision_chunk") window.sentChunks += 1;
            return send.call(this, data);
        };
    }""")

    page.get_by_label("Vision", exact=True).check()
    page.locator("#image").set_input_files(str(picture))
    expect(page.get_by_alt_text("Preview of the image to send")).to_be_visible()
    page.get_by_label("Prompt").fill("what is in this picture?")
    page.get_by_role("button", name="Send").click()

    card = answer_card(page, "what is in this picture?")
    expect(card.locator(".body")).to_have_text(f"echo: what is in this picture? [image: {size} bytes]")
    assert page.evaluate("window.sentChunks") >= 3
    progress = page.get_by_label("Upload progress")
    assert progress.evaluate("(bar) => bar.value === bar.max")


def test_page_reconnects_after_the_server_restarts_and_shows_what_finished_meanwhile(open_page, broker, models):
    models["chat"].configure(delay=6.0)
    page = open_page()
    ask(page, "answer me while the server is down")
    card = answer_card(page, "answer me while the server is down")
    expect(card).to_have_attribute("data-status", "queued")

    broker.stop()
    expect(page.locator("#status")).to_contain_text("retrying")
    wait_until_finished("answer me while the server is down")
    broker.start()

    expect(page.locator("#status")).to_have_text("connected", timeout=PATIENCE * 2000)
    expect(card.locator(".body")).to_have_text("echo: answer me while the server is down")
    expect(card).to_have_class(re.compile(r"\bmeanwhile\b"))
    expect(page.locator("#notice")).to_have_text("1 query finished while you were away.")


def test_model_choice_offers_the_pools_and_workers_of_the_chosen_type(open_page):
    off_the_browsers_loop(pools.create_pool, "$FAST", query_type="chat", members=["fake-chat"])
    page = open_page()
    choice = page.get_by_label("Model or pool")

    expect(choice.locator("option")).to_have_text(["any", "$FAST", "fake-chat · health 100"])
    page.get_by_label("Imagine", exact=True).check()
    expect(choice.locator("option")).to_have_text(["any", "fake-imagine · health 100"])

    page.get_by_label("Chat", exact=True).check()
    choice.select_option("$FAST")
    ask(page, "through the pool")
    expect(answer_card(page, "through the pool").locator(".cost")).to_contain_text("fake-chat")


def test_answers_render_markdown_with_code_kept_and_no_markup_from_the_model(open_page):
    page = open_page()
    prompt = "**bold** and <img src=x onerror=window.pwned=1>\n```python\nprint('<b>hi</b>')\n```"

    ask(page, prompt)
    body = answer_card(page, "**bold**").locator(".body")

    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("pre code")).to_have_text("print('<b>hi</b>')")
    expect(body).to_contain_text("<img src=x onerror=window.pwned=1>")
    assert body.locator("img, b").count() == 0
    assert page.evaluate("window.pwned") is None


def test_page_reads_well_on_a_phone_and_a_desktop_in_dark_and_light(open_page):
    for name, viewport, scheme in (("page-phone", PHONE, "dark"), ("page-desktop", DESKTOP, "light")):
        page = open_page(viewport=viewport, color_scheme=scheme)
        ask(page, "Write a haiku about **brokers**")
        expect(answer_card(page, "haiku")).to_have_attribute("data-status", "done")
        ask(page, "a red kite over hills", "imagine")
        expect(answer_card(page, "red kite").locator("img")).to_be_visible()

        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(15, 20, 25)") == (scheme == "dark")
        screenshot(page, name)


def test_every_control_has_an_accessible_name(open_page):
    page = open_page()

    unnamed = page.evaluate("""() => [...document.querySelectorAll('main input, main select, main textarea, main button')]
        .filter((el) => el.type !== 'hidden' && !el.closest('[hidden]'))
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !el.textContent.trim())
        .map((el) => el.outerHTML)""")

    assert unnamed == []


def test_favicon_is_served(open_page, broker):
    page = open_page()

    response = page.request.get(broker.url + "/favicon.ico")

    assert response.ok
    assert response.body()[:4] == b"\x00\x00\x01\x00"
