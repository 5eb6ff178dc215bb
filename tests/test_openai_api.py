"""/v1 through the official `openai` client, unchanged, against daphne and a realm worker
with the fake model server behind them: every request is a query like any other."""
import asyncio
import base64

import openai
import pytest
from asgiref.sync import sync_to_async

from accounts.actions.keys import create_key, revoke_key
from accounts.models import Charge, Query
from pools.actions import create_pool
from pools.testing.fake_answers import png_for
from realms.doors.access import max_body_bytes
from tests.doors import close_async_connections, start_daphne, stop_daphne  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)

PNG = base64.b64encode(png_for("a picture")).decode()


@pytest.fixture
def broker(start_worker):
    start_worker("--concurrency", "16")
    process, base = start_daphne()
    yield base
    stop_daphne(process)


@pytest.fixture
def chat_pool(fake_server, register_worker):
    worker = register_worker(fake_server, wire_format="openai", name="gpt-box", model="fake-model")
    create_pool("$CHAT", query_type="chat", members=[worker.name])
    return worker


@pytest.fixture
def make_client(broker, alice):
    def make(**limits) -> openai.OpenAI:
        _, secret = create_key(alice.guid, acting_user=None, **limits)
        return openai.OpenAI(base_url=f"{broker}/v1", api_key=secret, max_retries=0, timeout=30)

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def test_chat_completion_is_a_query_billed_once_to_the_keys_user(client, chat_pool, alice):
    completion = client.chat.completions.create(model="$CHAT", messages=[{"role": "user", "content": "hello there"}])

    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.usage.prompt_tokens == 2 and completion.usage.completion_tokens == 3
    query = Query.objects.get(pk=completion.id.removeprefix("chatcmpl-"))
    assert (query.user_id, query.status, query.worker) == (alice.guid, "done", "gpt-box")
    assert Charge.objects.filter(query_id=query.pk).count() == 1


def test_model_may_be_a_worker_name_or_a_model_a_worker_serves(client, chat_pool):
    by_worker = client.chat.completions.create(model="gpt-box", messages=[{"role": "user", "content": "a"}])
    by_model = client.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "b"}])

    assert (by_worker.choices[0].message.content, by_model.choices[0].message.content) == ("echo: a", "echo: b")


def test_conversation_options_reach_the_model_server(client, chat_pool):
    completion = client.chat.completions.create(
        model="$CHAT",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "last words"}],
        max_completion_tokens=5, temperature=0.2, stop=["\n"],
    )

    query = Query.objects.get(pk=completion.id.removeprefix("chatcmpl-"))
    assert query.options["max_tokens"] == 5 and query.options["stop"] == ["\n"]
    assert [message["role"] for message in query.options["messages"]] == ["system", "user"]
    assert query.prompt == "last words"


def test_stream_delivers_chunks_while_the_query_is_still_running(client, chat_pool, fake_server):
    fake_server.configure(token_delay=0.2)
    stream = client.chat.completions.create(
        model="$CHAT", messages=[{"role": "user", "content": "one two three four"}], stream=True,
        stream_options={"include_usage": True},
    )
    pieces, status_at_first_text, usage = [], None, None
    for event in stream:
        if event.choices and event.choices[0].delta.content:
            if status_at_first_text is None:
                status_at_first_text = Query.objects.get(pk=event.id.removeprefix("chatcmpl-")).status
            pieces.append(event.choices[0].delta.content)
        if event.usage is not None:
            usage = event.usage

    assert "".join(pieces) == "echo: one two three four"
    assert status_at_first_text == "running"
    assert usage.prompt_tokens == 4


def test_vision_takes_an_image_as_a_data_url(client, fake_server, register_worker):
    register_worker(fake_server, wire_format="openai", query_type="vision", name="eyes")
    completion = client.chat.completions.create(
        model="eyes",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        ]}],
    )

    assert completion.choices[0].message.content == f"echo: what is this [image: {len(base64.b64decode(PNG))} bytes]"
    assert Query.objects.get(pk=completion.id.removeprefix("chatcmpl-")).query_type == "vision"


def test_image_generation_answers_the_a1111_png(client, fake_server, register_worker):
    register_worker(fake_server, wire_format="a1111", query_type="imagine", name="painter")
    result = client.images.generate(prompt="a red fox", response_format="b64_json", size="256x256")

    assert base64.b64decode(result.data[0].b64_json) == png_for("a red fox")


@pytest.mark.parametrize("wire_format", ["openai", "ollama"])
def test_embeddings_come_from_ollama_and_openai_servers(client, fake_server, register_worker, wire_format):
    register_worker(fake_server, wire_format=wire_format, name="embedder", model="embed-model")
    floats = client.embeddings.create(model="embed-model", input=["alpha", "beta gamma"], encoding_format="float")
    packed = client.embeddings.create(model="embed-model", input="alpha")

    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 8
    assert packed.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)


def test_embeddings_are_refused_where_no_worker_serves_them(client, fake_server, register_worker):
    register_worker(fake_server, wire_format="predict", name="classic-box")

    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="classic-box", input="alpha")
    assert refused.value.code == "embeddings_unsupported"
    assert Query.objects.count() == 0


def test_models_lists_what_the_key_may_use_aliases_first(make_client, chat_pool):
    everything = [model.id for model in make_client().models.list()]
    limited = make_client(allowed_models=["gpt-box"])

    assert everything[0] == "$CHAT" and {"gpt-box", "fake-model"} <= set(everything)
    assert [model.id for model in limited.models.list()] == ["gpt-box"]
    assert limited.models.retrieve("gpt-box").id == "gpt-box"
    with pytest.raises(openai.NotFoundError):
        limited.models.retrieve("$CHAT")


def test_every_refusal_is_the_openai_exception_for_its_status(make_client, client, broker, chat_pool, fake_server, alice):
    hello = [{"role": "user", "content": "hi"}]
    bad_key = openai.OpenAI(base_url=f"{broker}/v1", api_key="rh-" + "x" * 43, max_retries=0)
    key, secret = create_key(alice.guid, acting_user=None)
    revoke_key(key.pk, acting_user=None)
    revoked = openai.OpenAI(base_url=f"{broker}/v1", api_key=secret, max_retries=0)
    once_a_minute = make_client(requests_per_minute=1)
    refusals = [
        (openai.AuthenticationError, lambda: bad_key.chat.completions.create(model="$CHAT", messages=hello)),
        (openai.AuthenticationError, lambda: revoked.chat.completions.create(model="$CHAT", messages=hello)),
        (openai.PermissionDeniedError, lambda: make_client(allowed_models=["gpt-box"]).chat.completions.create(model="$CHAT", messages=hello)),
        (openai.NotFoundError, lambda: client.chat.completions.create(model="no-such-model", messages=hello)),
        (openai.BadRequestError, lambda: client.chat.completions.create(model="$CHAT", messages=hello, n=2)),
        (openai.BadRequestError, lambda: client.chat.completions.create(model="$CHAT", messages=[])),
        (openai.BadRequestError, lambda: client.chat.completions.create(model="$CHAT", messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}}]}])),
        (openai.RateLimitError, lambda: [once_a_minute.chat.completions.create(model="$CHAT", messages=hello) for _ in range(2)]),
    ]
    for expected, request in refusals:
        with pytest.raises(expected) as refused:
            request()
        assert set(refused.value.body) >= {"message", "type", "code", "param"}

    fake_server.configure(failure_rate=1.0)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="$CHAT", messages=hello)
    assert failed.value.status_code == 502 and Charge.objects.count() == 1


def test_a_body_over_the_doors_limit_is_refused_with_413_before_anything_is_accepted(client, chat_pool, alice):
    hello = [{"role": "user", "content": "x" * (max_body_bytes() + 1)}]

    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="$CHAT", messages=hello)

    assert refused.value.status_code == 413
    assert refused.value.body["code"] == "body_too_large"
    assert not Query.objects.filter(user_id=alice.guid).exists()


def test_budget_spent_refuses_with_402(make_client, chat_pool):
    client = make_client(total_budget="0.000001")
    client.chat.completions.create(model="$CHAT", messages=[{"role": "user", "content": "first"}])

    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="$CHAT", messages=[{"role": "user", "content": "second"}])
    assert refused.value.status_code == 402
    assert Query.objects.count() == 1


async def test_a_stream_closed_by_its_client_stops_the_model_call_and_bills_what_was_produced(make_client, chat_pool, fake_server):
    fake_server.configure(token_delay=0.3)
    client = await sync_to_async(make_client)()
    aclient = openai.AsyncOpenAI(base_url=str(client.base_url), api_key=client.api_key, max_retries=0)
    words = " ".join(f"w{index}" for index in range(60))
    stream = await aclient.chat.completions.create(model="$CHAT", messages=[{"role": "user", "content": words}], stream=True)
    query_id = None
    async for event in stream:
        query_id = event.id.removeprefix("chatcmpl-")
        if event.choices and event.choices[0].delta.content:
            break
    await stream.close()

    for _ in range(100):
        query = await Query.objects.aget(pk=query_id)
        if query.status == "done":
            break
        await asyncio.sleep(0.1)
    assert query.status == "done"
    assert query.result and len(query.result) < len("echo: " + words)
    assert await Charge.objects.filter(query_id=query.pk).acount() == 1
