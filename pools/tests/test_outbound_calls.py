"""A worker's address is checked again when it is called, so a name that resolves somewhere
else since it was registered (DNS rebinding) or a policy tightened since is never connected
to; a redirect from a model server is never followed."""
import aiohttp
import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from pools import actions
from pools.clients import ModelRequest, ModelServerError
from pools.dispatch import serve
from pools.health import probe_worker
from pools.models import SelectionOutcome
from rentahal.http_session import process_session

pytestmark = pytest.mark.django_db(transaction=True)

NO_NETWORKS = override_settings(RENTAHAL_OUTBOUND_ALLOWED_NETWORKS=[])


def chat() -> ModelRequest:
    return ModelRequest(prompt="hello", query_type="chat")


@sync_to_async
def add(address: str, name: str, *, wire_format: str = "openai"):
    """Register a worker while loopback is allowed (tests/settings.py), as an operator would have."""
    return actions.add_worker(name=name, address=address, query_type="chat", wire_format=wire_format, model="fake")


@sync_to_async
def outcome_details() -> list[str]:
    return list(SelectionOutcome.objects.values_list("detail", flat=True))


async def test_a_name_resolving_to_a_refused_address_at_call_time_is_never_connected_to(fake_server):
    await add(f"http://localhost:{fake_server.port}", "rebound")

    with NO_NETWORKS, pytest.raises(ModelServerError) as failure:
        await serve(chat(), realm="$CHAT")

    assert "refused by the outbound address policy: localhost resolves to a refused address" in failure.value.message
    assert "loopback" in failure.value.message
    assert fake_server.stats()["requests"] == {}
    assert failure.value.message in await outcome_details()


async def test_the_realm_workers_shared_session_checks_addresses_too(fake_server):
    await add(f"http://localhost:{fake_server.port}", "rebound")

    async with process_session():
        with NO_NETWORKS, pytest.raises(ModelServerError) as failure:
            await serve(chat(), realm="$CHAT")

    assert "outbound address policy" in failure.value.message
    assert fake_server.stats()["requests"] == {}


async def test_the_redis_port_on_loopback_is_refused_at_call_time_when_loopback_is_not_allowed():
    await add("127.0.0.1:6379", "redis-in-disguise", wire_format="predict")

    with NO_NETWORKS, pytest.raises(ModelServerError) as failure:
        await serve(chat(), realm="$CHAT")

    assert failure.value.message == (
        "redis-in-disguise at http://127.0.0.1:6379 is refused by the outbound address policy: "
        "127.0.0.1 is a loopback address; list its network in OUTBOUND_ALLOWED_NETWORKS to allow it"
    )


async def test_a_307_redirect_is_not_followed_and_the_operator_is_told_why(fake_servers):
    target = fake_servers()
    redirecting = fake_servers(redirect_to=f"{target.url}/v1/chat/completions")
    await add(redirecting.url, "redirecting")

    with pytest.raises(ModelServerError) as failure:
        await serve(chat(), realm="$CHAT")

    assert "answered with a redirect (HTTP 307), redirect refused" in failure.value.message
    assert failure.value.public_reason == "The model server failed."
    assert redirecting.stats()["requests"] == {"/v1/chat/completions": 1}
    assert target.stats()["requests"] == {}


async def test_a_health_probe_does_not_follow_a_redirect_either(fake_servers):
    target = fake_servers()
    redirecting = fake_servers(redirect_to=f"{target.url}/v1/models")
    worker = await add(redirecting.url, "redirecting")

    async with aiohttp.ClientSession() as session:
        result = await probe_worker(session, worker, timeout=5)

    assert result.status == 307
    assert target.stats()["requests"] == {}
