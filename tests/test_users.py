"""Who is connecting: cookies, the first sysop, nicknames, bans and sysop-only frames."""
import uuid

import pytest
from asgiref.sync import sync_to_async

from accounts.models import User

pytestmark = pytest.mark.django_db(transaction=True)


async def test_new_visitor_gets_a_cookie_then_the_greeting_frames(connect):
    client = await connect(greeting=False)

    frames = await client.receive_until("huggingface_update")

    assert [frame["type"] for frame in frames] == [
        "set_cookie", "user_info", "previous_queries", "worker_update", "huggingface_update",
    ]
    guid = frames[0]["value"]
    assert frames[0]["name"] == "user_guid"
    assert frames[1]["data"]["guid"] == guid
    assert frames[1]["data"]["nickname"] == f"user_{guid[:8]}"
    assert frames[2]["data"] == []


async def test_first_visitor_of_an_empty_system_is_not_sysop_by_default(connect):
    first = await connect(greeting=False)

    info = (await first.receive_until("user_info"))[-1]

    assert info["data"]["is_sysop"] is False


async def test_with_first_visitor_is_sysop_the_first_user_is_sysop_and_the_second_is_not(connect, settings):
    settings.RENTAHAL_FIRST_VISITOR_IS_SYSOP = True
    first = await connect(greeting=False)
    first_info = (await first.receive_until("user_info"))[-1]
    second = await connect(greeting=False)
    second_info = (await second.receive_until("user_info"))[-1]

    assert first_info["data"]["is_sysop"] is True
    assert second_info["data"]["is_sysop"] is False


async def test_returning_visitor_is_recognised_by_cookie(alice, connect):
    client = await connect(alice.guid, greeting=False)

    frames = await client.receive_until("user_info")

    assert [frame["type"] for frame in frames] == ["user_info"]
    assert frames[0]["data"]["nickname"] == "alice"


async def test_unknown_but_well_formed_cookie_creates_that_user(connect):
    guid = str(uuid.uuid4())

    client = await connect(guid, greeting=False)
    info = (await client.receive_until("user_info"))[-1]

    assert info["data"]["guid"] == guid


async def test_banned_user_gets_error_and_is_closed(banned_user, connect):
    client = await connect(banned_user.guid, greeting=False)

    assert await client.receive() == {"type": "error", "code": "forbidden", "message": "You are banned from this service."}
    assert (await client.communicator.receive_output(timeout=2))["type"] == "websocket.close"


async def test_set_nickname_updates_user_info(alice, connect):
    client = await connect(alice.guid)

    await client.send({"type": "set_nickname", "nickname": "alice_in_chains"})
    info = await client.receive()

    assert info["type"] == "user_info"
    assert info["data"]["nickname"] == "alice_in_chains"


async def test_nickname_clash_is_refused(alice, bob, connect):
    client = await connect(alice.guid)

    await client.send({"type": "set_nickname", "nickname": "bob"})

    assert await client.receive() == {"type": "error", "code": "nickname_taken", "message": "Nickname already taken"}
    assert (await sync_to_async(User.objects.get)(pk=alice.guid)).nickname == "alice"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "get_stats"},
        {"type": "add_worker", "worker": {"name": "w", "address": "127.0.0.1:1", "type": "chat"}},
        {"type": "remove_worker", "worker_name": "w"},
        {"type": "ban_user", "user_guid": str(uuid.uuid4())},
        {"type": "unban_user", "user_guid": str(uuid.uuid4())},
        {"type": "terminate_query", "user_guid": str(uuid.uuid4())},
        {"type": "sysop_message", "message": "hi"},
    ],
    ids=lambda frame: frame["type"],
)
async def test_sysop_only_frames_are_refused_to_other_users(frame, alice, connect):
    client = await connect(alice.guid)

    await client.send(frame)

    assert await client.receive() == {
        "type": "error", "code": "forbidden", "message": f"'{frame['type']}' is for sysops only.",
    }


async def test_sysop_ban_closes_every_socket_of_the_banned_user(sysop, alice, connect):
    sysop_tab = await connect(sysop.guid)
    alice_tab = await connect(alice.guid)

    await sysop_tab.send({"type": "ban_user", "user_guid": alice.guid})

    assert await sysop_tab.receive() == {"type": "user_banned", "guid": alice.guid}
    assert await alice_tab.receive() == {"type": "user_banned", "guid": alice.guid}
    assert await alice_tab.receive() == {"type": "error", "code": "forbidden", "message": "You are banned from this service."}
    assert (await sync_to_async(User.objects.get)(pk=alice.guid)).is_banned


async def test_sysop_cannot_ban_themselves(sysop, connect):
    sysop_tab = await connect(sysop.guid)

    await sysop_tab.send({"type": "ban_user", "user_guid": sysop.guid})

    assert await sysop_tab.receive() == {"type": "error", "code": "ban_self", "message": "A sysop cannot ban themselves."}
    assert not (await sync_to_async(User.objects.get)(pk=sysop.guid)).is_banned


async def test_sysop_unban_lets_the_user_back_in(sysop, banned_user, connect):
    sysop_tab = await connect(sysop.guid)

    await sysop_tab.send({"type": "unban_user", "user_guid": banned_user.guid})

    assert await sysop_tab.receive() == {"type": "user_unbanned", "guid": banned_user.guid}
    returning = await connect(banned_user.guid, greeting=False)
    assert (await returning.receive())["type"] == "user_info"


async def test_sysop_adds_and_removes_a_worker_and_everyone_sees_it(sysop, alice, connect):
    sysop_tab = await connect(sysop.guid)
    alice_tab = await connect(alice.guid)

    await sysop_tab.send({"type": "add_worker", "worker": {"name": "gpu1", "address": "127.0.0.5:8000", "type": "chat"}})
    update = await alice_tab.receive()

    assert update["type"] == "worker_update"
    assert [worker["name"] for worker in update["workers"]] == ["gpu1"]
    await sysop_tab.send({"type": "remove_worker", "worker_name": "gpu1"})
    await alice_tab.receive_until("worker_update")
    assert alice_tab.frames[-1]["workers"] == []


async def test_add_worker_with_bad_fields_names_them(sysop, connect):
    client = await connect(sysop.guid)

    await client.send({"type": "add_worker", "worker": {"name": "w", "address": "127.0.0.1:1", "type": "telepathy"}})
    error = await client.receive()

    assert error["code"] == "invalid"
    assert list(error["fields"]) == ["query_type"]
    assert error["message"] == "query_type: Value 'telepathy' is not a valid choice."


async def test_sysop_message_reaches_every_connected_user(sysop, alice, bob, connect):
    sysop_tab = await connect(sysop.guid)
    others = [await connect(alice.guid), await connect(bob.guid)]

    await sysop_tab.send({"type": "sysop_message", "message": "maintenance at noon"})

    for client in [sysop_tab, *others]:
        assert await client.receive() == {"type": "sysop_message", "message": "maintenance at noon"}


async def test_sysop_gets_system_stats(sysop, connect):
    client = await connect(sysop.guid)

    await client.send({"type": "get_stats"})
    stats = await client.receive()

    assert stats["type"] == "system_stats"
    assert stats["data"]["total_queries"] == 0
    assert stats["data"]["workers"] == []


async def test_query_from_a_user_banned_after_connecting_is_refused_even_if_the_ban_push_was_lost(alice, default_realms, connect):
    client = await connect(alice.guid)
    await sync_to_async(User.objects.filter(pk=alice.guid).update)(is_banned=True)

    await client.send({"type": "submit_query", "query": {"prompt": "hi", "query_type": "chat"}})

    assert await client.receive() == {"type": "error", "code": "forbidden", "message": "You are banned from this service."}
