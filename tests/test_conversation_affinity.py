"""Conversation affinity end to end: a /ws query's `conversation_id` keeps the conversation on
one member of an `affinity` pool while that member is healthy, so its cache stays warm;
different conversations of one user spread; a conversation whose member failed moves once and
then stays where it moved."""
import pytest
from asgiref.sync import sync_to_async

from accounts.models import Charge, Query
from pools import actions, state

pytestmark = pytest.mark.django_db(transaction=True)

MEMBERS = ("a", "b", "c")


@pytest.fixture
def affinity_pool(start_worker, fake_servers, register_worker):
    """An affinity pool of three members, each its own fake server; returns the servers by name."""
    start_worker("--concurrency", "16", "--shutdown-grace", "5")
    servers = {name: fake_servers() for name in MEMBERS}
    for name, server in servers.items():
        register_worker(server, "openai", name=name)
    actions.create_pool("$CHAT", query_type="chat", members=list(MEMBERS), strategy="affinity")
    return servers


def chat(prompt: str, conversation_id: str | None = None) -> dict:
    query = {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": ""}
    if conversation_id is not None:
        query["conversation_id"] = conversation_id
    return {"type": "submit_query", "query": query}


async def ask(client, prompt: str, conversation_id: str | None = None) -> dict:
    await client.send(chat(prompt, conversation_id))
    return (await client.receive_until("query_result"))[-1]


async def test_one_conversation_stays_on_one_member_across_many_queries(affinity_pool, alice, connect):
    client = await connect(alice.guid)

    served = [(await ask(client, f"turn {turn}", "trip-planning"))["worker"] for turn in range(8)]

    assert len(set(served)) == 1
    query = await sync_to_async(Query.objects.filter(user_id=alice.guid).first)()
    assert query.conversation_id == "trip-planning"


async def test_different_conversations_of_one_user_spread_over_the_members(affinity_pool, alice, connect):
    client = await connect(alice.guid)

    served = {(await ask(client, "hello", f"conversation-{n}"))["worker"] for n in range(10)}

    assert len(served) > 1


async def test_a_conversation_moves_when_its_member_fails_and_then_stays_on_the_new_one(affinity_pool, alice, connect):
    client = await connect(alice.guid)
    first = (await ask(client, "hello", "debugging"))["worker"]
    affinity_pool[first].configure(failure_rate=1.0)

    moved = await ask(client, "still there?", "debugging")
    affinity_pool[first].configure(failure_rate=0.0)
    state.clear_cooldown(first)
    later = [(await ask(client, f"turn {turn}", "debugging"))["worker"] for turn in range(4)]

    assert moved["worker"] != first
    assert later == [moved["worker"]] * 4
    assert await sync_to_async(Charge.objects.filter(query_id=moved["query_id"]).count)() == 1


async def test_without_a_conversation_a_users_queries_stay_on_one_member(affinity_pool, alice, connect):
    client = await connect(alice.guid)

    served = {(await ask(client, f"turn {turn}"))["worker"] for turn in range(5)}

    assert len(served) == 1


async def test_two_users_naming_their_conversations_alike_are_kept_apart(affinity_pool, alice, bob, connect):
    """The conversation is the user's: another user's "chat-1" is another conversation."""
    alice_client, bob_client = await connect(alice.guid), await connect(bob.guid)
    await ask(alice_client, "hello", "chat-1")
    await ask(bob_client, "hello", "chat-1")

    remembered = sorted(key for key in state.client().scan_iter("pools:aff:*"))

    assert len(remembered) == 2
    assert [key.rsplit(":", 1)[-1] for key in remembered] == ["chat-1", "chat-1"]


@pytest.mark.parametrize("conversation_id", ["", "x" * 129, "line\nbreak", 42])
async def test_a_malformed_conversation_id_is_refused_and_nothing_is_written(conversation_id, alice, connect, default_realms):
    client = await connect(alice.guid)

    await client.send(chat("hello", conversation_id))
    error = await client.receive()

    assert error == {
        "type": "error", "code": "bad_field", "message": "Field 'conversation_id' must be 1 to 128 printable characters.",
    }
    assert await sync_to_async(Query.objects.filter(user_id=alice.guid).count)() == 0
