"""Speech on the users' page in a real browser, against the bundled Whisper and Piper servers:
offered once the speech realm serves it, asked by a picked recording or the microphone, the
words heard shown and the spoken answer played."""
import io
import re
import urllib.request
import wave

import pytest
from playwright.sync_api import expect, sync_playwright

from pools import actions as pools
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, DESKTOP, PATIENCE, off_the_browsers_loop

pytestmark = pytest.mark.django_db(transaction=True)

SENTENCE = "The capital of France is Paris."
# Whisper and Piper on a loaded box: a spoken answer takes three model calls.
SPEECH_PATIENCE = PATIENCE * 3


@pytest.fixture(scope="module")
def spoken_question(text_to_speech_url, tmp_path_factory) -> str:
    """A WAV file of the sentence in Piper's voice: a question a person could have recorded."""
    request = urllib.request.Request(
        f"{text_to_speech_url}/v1/audio/speech", data=f'{{"input": "{SENTENCE}"}}'.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        audio = response.read()
    with wave.open(io.BytesIO(audio)) as recording:
        assert recording.getnframes() / recording.getframerate() > 1
    path = tmp_path_factory.mktemp("speech") / "question.wav"
    path.write_bytes(audio)
    return str(path)


def serve_speech(speech_to_text_url: str, text_to_speech_url: str) -> None:
    """Put the real speech servers in the speech realm's two pools."""
    for name, url, pool in (
        ("whisper", speech_to_text_url, "$SPEECH_TO_TEXT"), ("piper", text_to_speech_url, "$TEXT_TO_SPEECH"),
    ):
        pools.add_worker(name=name, address=url, query_type="speech", wire_format="openai_audio")
        pools.create_pool(pool, query_type="speech", realm="$SPEECH", members=[name])


def spoken_card(page):
    return page.locator("article.answer").filter(has=page.locator(".kind", has_text="speech"))


def test_speech_is_offered_once_the_speech_realm_serves_it_and_a_picked_recording_is_answered_aloud(
    open_page, speech_to_text_url, text_to_speech_url, spoken_question
):
    page = open_page()
    expect(page.get_by_label("Speech", exact=True)).to_be_hidden()

    off_the_browsers_loop(serve_speech, speech_to_text_url, text_to_speech_url)
    page.get_by_label("Speech", exact=True).check()
    page.get_by_label("or pick a recording (WAV or WebM)").set_input_files(spoken_question)
    expect(page.get_by_label("The recording to send")).to_be_visible()
    page.get_by_role("button", name="Send").click()

    card = spoken_card(page)
    expect(card.locator(".prompt")).to_contain_text(re.compile("capital.*paris", re.I), timeout=SPEECH_PATIENCE * 1000)
    expect(card.locator(".prompt")).to_have_class(re.compile(r"\bheard\b"))
    player = card.locator(".body audio")
    expect(player).to_be_visible()
    expect(player).to_have_attribute("src", re.compile(r"^data:audio/wav;base64,UklGR"))
    expect(card.locator(".cost")).to_contain_text("whisper, fake-chat, piper")


@pytest.fixture
def microphone(broker, spoken_question, monkeypatch):
    """Chromium whose microphone hears the spoken question (its fake capture device plays
    the WAV file in a loop) and which grants the page the microphone without asking."""
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    arguments = [
        *CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={spoken_question}",
    ]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=arguments, headless=True)
        context = launched.new_context(viewport=DESKTOP)
        page = context.new_page()
        page.goto(broker.url + "/")
        expect(page.locator("#status")).to_have_text("connected")
        yield page
        context.close()
        launched.close()


def test_a_question_recorded_from_the_microphone_is_heard_and_answered_as_text(
    speech_to_text_url, text_to_speech_url, microphone
):
    page = microphone
    off_the_browsers_loop(serve_speech, speech_to_text_url, text_to_speech_url)
    page.get_by_label("Speech", exact=True).check()
    page.get_by_label("Speak the answer").uncheck()

    page.get_by_role("button", name="Record a question").click()
    expect(page.locator("#audio-hint")).to_contain_text("Recording… 4 s")
    page.get_by_role("button", name="Stop recording").click()
    expect(page.get_by_label("The recording to send")).to_be_visible()
    page.get_by_role("button", name="Send").click()

    card = spoken_card(page)
    expect(card.locator(".prompt")).to_contain_text(re.compile("paris", re.I), timeout=SPEECH_PATIENCE * 1000)
    expect(card.locator(".body")).to_contain_text(re.compile(r"^echo: .*paris", re.I))
    expect(card.locator(".body audio")).to_have_count(0)
