"""API keys: made, listed and revoked by their user over /ws (and by operators), stored
hashed, and their limits exact under concurrency across web processes (accounts.limits)."""
import asyncio
import concurrent.futures
import hashlib

import aiohttp
import pytest
from django.core.management import call_command

from accounts import limits
from accounts.actions.keys import create_key
from accounts.models import ApiKey, Query
from tests.doors import close_async_connections, start_daphne, stop_daphne  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_user_makes_lists_and_revokes_keys_over_the_socket(default_realms, alice, connect):
    socket = await connect(alice.guid)
    await socket.send({"type": "create_api_key", "name": "laptop", "requests_per_minute": 30, "allowed_models": ["$CHAT"]})
    created = (await socket.receive_until("api_key_created"))[-1]
    await socket.send({"type": "list_api_keys"})
    listed = (await socket.receive_until("api_keys"))[-1]
    await socket.send({"type": "revoke_api_key", "key_id": created["key"]["id"]})
    revoked = (await socket.receive_until("api_key_revoked"))[-1]

    secret = created["secret"]
    assert secret.startswith("rh-") and len(secret) == 46
    assert [key["name"] for key in listed["keys"]] == ["laptop"]
    assert all("secret" not in key and secret not in str(key) for key in listed["keys"])
    stored = await ApiKey.objects.aget(pk=created["key"]["id"])
    assert stored.hashed == hashlib.sha256(secret.encode()).hexdigest()
    assert revoked["key"]["revoked_at"] is not None


async def test_a_user_cannot_revoke_someone_elses_key(default_realms, alice, bob, connect):
    from asgiref.sync import sync_to_async

    key, _ = await sync_to_async(create_key)(bob.guid, acting_user=None)
    socket = await connect(alice.guid)
    await socket.send({"type": "revoke_api_key", "key_id": key.pk})
    refused = (await socket.receive_until("error"))[-1]

    assert refused["code"] == "not_found"
    assert (await ApiKey.objects.aget(pk=key.pk)).revoked_at is None


async def test_bad_limits_are_refused_naming_the_field(default_realms, alice, connect):
    socket = await connect(alice.guid)
    await socket.send({"type": "create_api_key", "requests_per_minute": -1, "daily_budget": "lots"})
    refused = (await socket.receive_until("error"))[-1]

    assert set(refused["fields"]) == {"requests_per_minute", "daily_budget"}
    assert await ApiKey.objects.acount() == 0


def test_operators_make_list_and_revoke_keys_with_a_command(alice, capsys):
    call_command("api_keys", "create", "alice", "--name", "ci", "--requests-per-minute", "5", "--allow", "$CHAT")
    made = capsys.readouterr().out
    key = ApiKey.objects.get()
    call_command("api_keys", "list", "alice")
    listed = capsys.readouterr().out
    call_command("api_keys", "revoke", str(key.pk))

    assert "rh-" in made and (key.user_guid, key.requests_per_minute, key.allowed_models) == (alice.guid, 5, ["$CHAT"])
    assert key.prefix in listed and "live" in listed
    assert ApiKey.objects.get().revoked_at is not None


def test_in_flight_limit_admits_exactly_its_number_of_100_concurrent_requests(alice):
    key, _ = create_key(alice.guid, acting_user=None, max_in_flight=7)

    def try_once(_):
        try:
            return limits.admit(key)
        except limits.KeyLimitReached:
            return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        admitted = [admission for admission in pool.map(try_once, range(100)) if admission]
    limits.release(admitted[0])

    assert len(admitted) == 7
    assert try_once(0) is not None and try_once(0) is None


@pytest.fixture
def two_web_processes(start_worker):
    start_worker("--concurrency", "16")
    started = [start_daphne() for _ in range(2)]
    yield [base for _, base in started]
    for process, _ in started:
        stop_daphne(process)


async def test_requests_per_minute_hold_exactly_across_two_web_processes(two_web_processes, alice, fake_server, register_worker):
    from asgiref.sync import sync_to_async

    await sync_to_async(register_worker)(fake_server, wire_format="openai", name="gpt-box")
    _, secret = await sync_to_async(create_key)(alice.guid, acting_user=None, requests_per_minute=10)
    body = {"model": "gpt-box", "messages": [{"role": "user", "content": "hi"}]}

    async def post(session, index):
        base = two_web_processes[index % 2]
        async with session.post(f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {secret}"}) as response:
            return response.status, response.headers.get("Retry-After"), await response.json()

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        answers = await asyncio.gather(*(post(session, index) for index in range(100)))

    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 10 and statuses.count(429) == 90
    refused = [(retry_after, body) for status, retry_after, body in answers if status == 429]
    assert all(int(retry_after) >= 1 and body["error"]["type"] == "rate_limit_error" for retry_after, body in refused)
    assert await Query.objects.acount() == 10
