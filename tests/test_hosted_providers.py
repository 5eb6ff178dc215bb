"""Hosted providers through the whole query path: /ws → realm queue → real RQ worker → the
fake server speaking the Anthropic Messages API or Hugging Face TGI over HTTP, with its key
checked → the streamed, stored, billed answer; and what a user sees when a provider is
missing, unkeyed or failing."""
import pytest
from asgiref.sync import sync_to_async

from accounts.models import Charge, Query, User
from pools import actions
from pools.models import SelectionOutcome

pytestmark = pytest.mark.django_db(transaction=True)

PROVIDERS = [("claude", "anthropic"), ("huggingface", "huggingface")]
PROVIDER_KEY = "sk-provider-key"
GENERIC_FAILURE = "Query failed: The model server failed."


@pytest.fixture
def realm_worker(start_worker):
    return start_worker("--concurrency", "16", "--shutdown-grace", "5")


@pytest.fixture(autouse=True)
def no_keys_in_the_environment(settings, monkeypatch):
    """Keys come from each test: the worker's own, or an environment the test sets."""
    for variable in ("ANTHROPIC_API_KEY", "HF_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
        setattr(settings, f"RENTAHAL_{variable}", "")


def chat(prompt: str, *, model_type: str = "worker_node", model_name: str = "") -> dict:
    query = {"prompt": prompt, "query_type": "chat", "model_type": model_type, "model_name": model_name}
    return {"type": "submit_query", "query": query}


def charges_of(query_id: str) -> list[Charge]:
    return list(Charge.objects.filter(query_id=query_id))


def attempts() -> list[tuple[str, str]]:
    return list(SelectionOutcome.objects.order_by("created_at", "id").values_list("worker", "result"))


def query_count() -> int:
    return Query.objects.count()


@pytest.mark.parametrize(("model_type", "wire_format"), PROVIDERS)
async def test_a_hosted_model_type_is_streamed_stored_and_billed_once(
    model_type, wire_format, realm_worker, fake_servers, register_worker, alice, connect
):
    # Pieces paced wider than the push window arrive as frames of their own.
    provider = fake_servers(api_key=PROVIDER_KEY, token_delay=0.2)
    local = fake_servers()
    await sync_to_async(register_worker)(local, "openai", name="local")
    await sync_to_async(register_worker)(provider, wire_format, name="hosted", api_key=PROVIDER_KEY)
    client = await connect(alice.guid)

    await client.send(chat("one two three four", model_type=model_type))
    frames = await client.receive_until("query_result")

    result = frames[-1]
    chunks = [frame["chunk"] for frame in frames if frame["type"] == "query_chunk"]
    assert frames[0]["type"] == "queue_update"
    assert (result["result"], result["worker"]) == ("echo: one two three four", "hosted")
    assert len(chunks) > 1 and "".join(chunks) == result["result"]
    charges = await sync_to_async(charges_of)(result["query_id"])
    assert [charge.amount for charge in charges] == [(await sync_to_async(Query.objects.get)(pk=result["query_id"])).cost]
    assert result["cost"] == float(charges[0].amount)
    assert sum(provider.stats()["requests"].values()) == 1
    assert local.stats()["requests"] == {}


async def test_a_claude_worker_may_take_its_key_from_the_environment(
    settings, monkeypatch, start_worker, fake_server, register_worker, alice, connect
):
    settings.RENTAHAL_ANTHROPIC_API_KEY = PROVIDER_KEY
    monkeypatch.setenv("ANTHROPIC_API_KEY", PROVIDER_KEY)
    start_worker("--concurrency", "16", "--shutdown-grace", "5")
    fake_server.configure(api_key=PROVIDER_KEY)
    await sync_to_async(register_worker)(fake_server, "anthropic", name="claude")
    client = await connect(alice.guid)

    await client.send(chat("hello", model_type="claude"))
    result = (await client.receive_until("query_result"))[-1]

    assert (result["result"], result["worker"]) == ("echo: hello", "claude")


@pytest.mark.parametrize(("model_type", "wire_format"), PROVIDERS)
async def test_a_hosted_model_type_with_only_local_workers_is_refused_and_nothing_is_written(
    model_type, wire_format, realm_worker, fake_server, register_worker, alice, connect
):
    await sync_to_async(register_worker)(fake_server, "openai", name="local")
    client = await connect(alice.guid)

    await client.send(chat("are you claude?", model_type=model_type))
    error = await client.receive()

    assert error == {
        "type": "error", "code": "no_worker", "message": f"No chat worker for model type {model_type} is registered.",
    }
    assert await sync_to_async(query_count)() == 0
    assert fake_server.stats()["requests"] == {}


@pytest.mark.parametrize(("model_type", "wire_format"), PROVIDERS)
async def test_a_hosted_model_type_whose_workers_have_no_key_is_refused_and_nothing_is_charged(
    model_type, wire_format, realm_worker, fake_servers, register_worker, alice, connect
):
    provider, local = fake_servers(), fake_servers()
    await sync_to_async(register_worker)(provider, wire_format, name="hosted")
    await sync_to_async(register_worker)(local, "openai", name="local")
    client = await connect(alice.guid)

    await client.send(chat("hello", model_type=model_type))
    error = await client.receive()

    assert error["code"] == "missing_provider_key"
    assert error["message"].startswith(f"No API key for {wire_format}: ")
    assert await sync_to_async(query_count)() == 0
    assert provider.stats()["requests"] == local.stats()["requests"] == {}
    assert (await sync_to_async(User.objects.get)(pk=alice.guid)).query_count == 0


@pytest.mark.parametrize("wire_format", ["anthropic", "huggingface"])
@pytest.mark.parametrize(
    ("knobs", "key", "result"),
    [
        ({"failure_rate": 1.0, "fail_status": 529}, PROVIDER_KEY, "server"),
        ({}, "", "auth"),
    ],
    ids=["provider-overloaded", "no-key"],
)
async def test_a_failing_hosted_member_fails_over_to_a_local_member_of_the_alias_and_is_charged_once(
    wire_format, knobs, key, result, realm_worker, fake_servers, register_worker, alice, connect
):
    provider, local = fake_servers(api_key=PROVIDER_KEY, **knobs), fake_servers()
    await sync_to_async(register_worker)(provider, wire_format, name="hosted", api_key=key)
    await sync_to_async(register_worker)(local, "openai", name="local", health_score=50)
    await sync_to_async(actions.create_pool)("$CHAT", query_type="chat", members=["hosted", "local"], strategy="health")
    client = await connect(alice.guid)

    await client.send(chat("anyone?", model_name="$CHAT"))
    answer = (await client.receive_until("query_result"))[-1]

    assert (answer["result"], answer["worker"]) == ("echo: anyone?", "local")
    assert await sync_to_async(attempts)() == [("hosted", result), ("local", "ok")]
    assert len(await sync_to_async(charges_of)(answer["query_id"])) == 1
    assert (await sync_to_async(User.objects.get)(pk=alice.guid)).query_count == 1


@pytest.mark.parametrize(("model_type", "wire_format"), PROVIDERS)
async def test_a_providers_error_body_reaches_the_operators_record_but_never_the_user(
    model_type, wire_format, realm_worker, fake_server, register_worker, alice, connect
):
    secret = "organization org-4711 is over its quota; contact billing@example.com"
    await sync_to_async(register_worker)(fake_server, wire_format, name="hosted", api_key=PROVIDER_KEY)
    fake_server.configure(failure_rate=1.0, fail_status=500, fail_message=secret)
    client = await connect(alice.guid)

    await client.send(chat("hello", model_type=model_type))
    frames = await client.receive_until("error", timeout=20)

    assert frames[-1]["message"] == GENERIC_FAILURE
    assert not any("org-4711" in str(frame) for frame in frames)
    details = await sync_to_async(list)(SelectionOutcome.objects.values_list("detail", flat=True))
    assert any(secret in detail for detail in details)
    assert await sync_to_async(Charge.objects.count)() == 0
