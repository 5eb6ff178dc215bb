"""Changes to realms are published on the `events.realms` group once committed, for
dashboards and agent tools that subscribe (rentahal.pushes)."""

import pytest
from channels.db import database_sync_to_async

from realms import actions
from realms.models import Realm
from rentahal.pushes import REALM_EVENTS

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def subscriber(subscribe):
    return await subscribe(REALM_EVENTS)


def event(name: str, op: str = "saved", by: str = "system") -> dict:
    return {"type": "realm.changed", "op": op, "name": name, "by": by}


async def test_a_realm_taking_over_a_type_publishes_both_realms(default_realms, subscriber, sysop):
    await database_sync_to_async(actions.create_realm)(name="$CHAT_EU", query_type="chat", acting_user=sysop)

    assert {frozenset((await subscriber()).items()) for _ in range(2)} == {
        frozenset(event("$CHAT", by=f"sysop {sysop.guid}").items()),
        frozenset(event("$CHAT_EU", by=f"sysop {sysop.guid}").items()),
    }


async def test_a_realm_updated_and_deleted_is_published(default_realms, subscriber):
    await database_sync_to_async(actions.create_realm)(name="$CHAT_EU", query_type="chat")
    await subscriber()
    await subscriber()
    chat = await database_sync_to_async(Realm.objects.get)(name="$CHAT")

    await database_sync_to_async(actions.update_realm)(chat, queue_limit=5)
    await database_sync_to_async(actions.delete_realm)(chat)

    assert await subscriber() == event("$CHAT")
    assert await subscriber() == event("$CHAT", "deleted")


async def test_a_realm_saved_in_the_admin_is_published_as_the_staff_member(default_realms, subscriber, admin_client):
    speech = await database_sync_to_async(Realm.objects.get)(name="$SPEECH")
    form = {
        "query_type": "speech", "min_workers": "1", "max_workers": "4", "queue_limit": "1000",
        "backups-TOTAL_FORMS": "0", "backups-INITIAL_FORMS": "0", "backups-MIN_NUM_FORMS": "0", "backups-MAX_NUM_FORMS": "1000",
    }

    response = await database_sync_to_async(admin_client.post)(f"/admin/realms/realm/{speech.pk}/change/", form)

    assert response.status_code == 302
    assert await subscriber() == event("$SPEECH", by="staff admin")
    assert (await database_sync_to_async(Realm.objects.get)(pk=speech.pk)).max_workers == 4
