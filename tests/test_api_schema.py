"""One OpenAPI schema at /api/schema/ for the DRF APIs (pools, realms) and the HTTP doors
(/v1, the classic routes): valid, browsable from the broker's own static files, and fuzzed
by schemathesis without a server error."""
import subprocess
import sys
import tempfile
import urllib.request

import orjson
import pytest
from django.test import Client
from drf_spectacular.validation import validate_schema

from accounts.actions.keys import create_key
from pools import actions as pools
from conftest import make_staff
from tests.doors import start_daphne, stop_daphne

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def web(default_realms):
    process, base = start_daphne()
    yield base
    stop_daphne(process)


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read()


def test_schema_is_valid_openapi_covering_the_pools_and_realms_apis(web):
    status, body = fetch(f"{web}/api/schema/?format=json")
    schema = orjson.loads(body)

    validate_schema(schema)
    assert {"/api/pools/", "/api/pools/workers/", "/api/realms/", "/api/realms/summary/"} <= set(schema["paths"])
    assert {"/v1/chat/completions", "/v1/models", "/v1/embeddings", "/api/chat", "/api/whisper"} <= set(schema["paths"])


def test_the_schema_ui_is_served_from_the_brokers_own_static_files(web):
    _, page = fetch(f"{web}/api/docs/")
    html = page.decode()
    scripts = [part.split('"')[0] for part in html.split('src="')[1:]]

    assert scripts and all(src.startswith("/static/") for src in scripts)
    assert all(fetch(f"{web}{src}")[0] == 200 for src in scripts)


def fuzz(web: str, *options: str) -> subprocess.CompletedProcess:
    """Run schemathesis against the live schema, checking only that nothing answers 5xx
    (in a directory of its own: it leaves a cache of what it found where it runs)."""
    return subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", f"{web}/api/schema/?format=json",
            "--checks", "not_a_server_error", "--max-examples", "6", "--phases", "examples,fuzzing",
            "--generation-deterministic", "--request-timeout", "10", *options,
        ],
        capture_output=True, text=True, timeout=120, cwd=tempfile.mkdtemp(prefix="rentahal-schemathesis-"),
    )


def test_schemathesis_finds_no_server_error_in_the_pools_and_realms_apis_as_a_superuser(web):
    client = Client()
    client.force_login(make_staff("root", is_superuser=True))
    token = "t" * 32
    run = fuzz(
        web, "--include-path-regex", "^/api/(pools|realms)/",
        "-H", f"Cookie: sessionid={client.cookies['sessionid'].value}; csrftoken={token}", "-H", f"X-CSRFToken: {token}",
    )

    assert run.returncode == 0, run.stdout[-4000:]


def test_schemathesis_finds_no_server_error_in_the_doors_with_a_key(
    web, start_worker, alice, fake_server, register_worker, speech_to_text_url, text_to_speech_url
):
    """With a worker of every type (so no query fails for want of one; the speech realm's
    pools on the real speech servers), no fuzzed request is a server error."""
    start_worker("--concurrency", "16")
    register_worker(fake_server, wire_format="openai", name="gpt-box")
    register_worker(fake_server, wire_format="openai", query_type="vision", name="eyes")
    register_worker(fake_server, wire_format="a1111", query_type="imagine", name="painter")
    for name, url, pool in (("whisper", speech_to_text_url, "$SPEECH_TO_TEXT"), ("piper", text_to_speech_url, "$TEXT_TO_SPEECH")):
        pools.add_worker(name=name, address=url, query_type="speech", wire_format="openai_audio")
        pools.create_pool(pool, query_type="speech", realm="$SPEECH", members=[name])
    _, secret = create_key(alice.guid, acting_user=None)
    run = fuzz(web, "--include-path-regex", "^/(v1/|api/(chat|vision|imagine|whisper|bark)$)", "-H", f"Authorization: Bearer {secret}")

    assert run.returncode == 0, run.stdout[-4000:]
