"""Which realm takes a query: the primary while it has room, then its backups in order."""
import pytest
from asgiref.sync import sync_to_async

from accounts.models import Query
from realms.models import Realm, RealmBackup
from realms.actions import create_realm
from realms.routing import backup_chain, home_realm, route_query
from rentahal.errors import Unavailable
from rentahal.sharding import shard_aliases, shard_for_query

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def count_queries() -> int:
    return sum(Query.objects.using(alias).count() for alias in shard_aliases())


def imagine(prompt: str) -> dict:
    return {"type": "submit_query", "query": {"prompt": prompt, "query_type": "imagine", "model_type": "worker_node", "model_name": ""}}


@pytest.fixture
def imagine_with_backup(default_realms):
    """$IMAGINE takes one waiting query, then overflows to $IMAGINE_2 (which also takes one)."""
    primary = default_realms["imagine"]
    primary.queue_limit = 1
    primary.save()
    backup = Realm.objects.create(name="$IMAGINE_2", queue_limit=1)
    RealmBackup.objects.create(realm=primary, query_type="imagine", backup=backup)
    return primary, backup


async def test_a_full_realm_overflows_to_its_first_backup_with_room(imagine_with_backup, alice, connect):
    client = await connect(alice.guid)

    await client.send(imagine("first fox"))
    first = await client.receive()
    await client.send(imagine("second fox"))
    second = await client.receive()

    assert (first["type"], first["realm"]) == ("queue_update", "$IMAGINE")
    assert (second["type"], second["realm"]) == ("queue_update", "$IMAGINE_2")
    stored = await sync_to_async(Query.objects.using(shard_for_query(second["query_id"])).get)(pk=second["query_id"])
    assert stored.realm == "$IMAGINE_2"


async def test_when_the_realm_and_its_backups_are_full_the_user_is_told(imagine_with_backup, alice, connect):
    client = await connect(alice.guid)
    await client.send(imagine("one"))
    await client.send(imagine("two"))
    await client.receive()
    await client.receive()

    await client.send(imagine("three"))
    refused = await client.receive()

    assert refused == {
        "type": "error",
        "code": "realm_full",
        "message": "The $IMAGINE realm is full and so are its backups ($IMAGINE_2); try again shortly.",
    }
    assert await sync_to_async(count_queries)() == 2


async def test_a_full_realm_without_backups_refuses_with_a_clear_error(default_realms, alice, connect):
    chat = default_realms["chat"]
    chat.queue_limit = 0
    await sync_to_async(chat.save)()
    client = await connect(alice.guid)

    await client.send({"type": "submit_query", "query": {"prompt": "hi", "query_type": "chat"}})
    refused = await client.receive()

    assert refused["type"] == "error"
    assert refused["message"].startswith("The $CHAT realm is full")
    assert await sync_to_async(count_queries)() == 0


def test_backups_are_tried_in_order_each_followed_by_its_own_backups(default_realms):
    chat = default_realms["chat"]
    first, second, nested = (Realm.objects.create(name=name) for name in ("$B1", "$B2", "$B1_BACKUP"))
    RealmBackup.objects.create(realm=chat, query_type="chat", backup=second, position=2)
    RealmBackup.objects.create(realm=chat, query_type="chat", backup=first, position=1)
    RealmBackup.objects.create(realm=first, query_type="chat", backup=nested, position=1)
    RealmBackup.objects.create(realm=first, query_type="vision", backup=second, position=0)

    assert [realm.name for realm in backup_chain(chat, "chat")] == ["$B1", "$B1_BACKUP", "$B2"]


def test_a_looping_backup_row_is_refused_by_model_validation(default_realms):
    from django.core.exceptions import ValidationError

    chat, vision = default_realms["chat"], default_realms["vision"]
    RealmBackup.objects.create(realm=chat, query_type="chat", backup=vision)

    with pytest.raises(ValidationError, match=r"Backup chain loops: \$VISION → \$CHAT → \$VISION"):
        RealmBackup(realm=vision, query_type="chat", backup=chat).full_clean()


def test_a_users_home_realm_is_stable_and_spreads_users(default_realms):
    realms = list(Realm.objects.all())
    guids = [f"00000000-0000-4000-8000-{index:012d}" for index in range(200)]

    homes = [home_realm(guid, realms).name for guid in guids]

    assert homes == [home_realm(guid, list(reversed(realms))).name for guid in guids]
    assert set(homes) == {"$CHAT", "$VISION", "$IMAGINE", "$SPEECH"}


def test_routing_reads_no_database_while_the_realms_are_unchanged(default_realms, django_assert_num_queries):
    route_query("chat")

    with django_assert_num_queries(0):
        realm, depth = route_query("chat")

    assert (realm.name, depth) == ("$CHAT", 0)


def test_a_realm_made_primary_for_a_type_is_routed_to_by_the_next_query(default_realms):
    route_query("chat")

    create_realm(name="$CHAT_2", query_type="chat")

    assert route_query("chat")[0].name == "$CHAT_2"


def test_a_realm_full_with_no_backups_refuses_the_query_and_says_so(default_realms):
    chat = default_realms["chat"]
    chat.queue_limit = 0
    chat.save()

    with pytest.raises(Unavailable, match=r"The \$CHAT realm is full \(0 queries waiting\)"):
        route_query("chat")
