"""Each user has a home realm; realms count their live connections and a sysop can speak to one
realm or to all."""
import uuid

import pytest
from asgiref.sync import sync_to_async

from realms.models import Realm
from realms.routing import home_realm
from rentahal import metrics

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def guid_homed_in(realm_name: str, realms: list[Realm], avoid: str | None = None) -> str:
    """Return a fresh guid whose home is (or, with `avoid`, is not) the named realm."""
    while True:
        guid = str(uuid.uuid4())
        home = home_realm(guid, realms).name
        if (avoid is None and home == realm_name) or (avoid is not None and home != avoid):
            return guid


async def test_a_realm_counts_its_live_connections_and_their_peak(default_realms, connect):
    realms = await sync_to_async(list)(Realm.objects.all())
    guid = guid_homed_in("$VISION", realms)
    first = await connect(guid)
    second = await connect(guid)
    await first.close()

    vision = await sync_to_async(metrics.realm_metrics)("$VISION", workers=0)

    assert (vision["connections"], vision["peak_connections"]) == (1, 2)
    await second.close()
    assert (await sync_to_async(metrics.realm_metrics)("$VISION", workers=0))["connections"] == 0


async def test_sysop_message_to_one_realm_reaches_only_its_users(default_realms, sysop, connect):
    realms = await sync_to_async(list)(Realm.objects.all())
    inside = await connect(guid_homed_in("$CHAT", realms))
    outside = await connect(guid_homed_in("", realms, avoid="$CHAT"))
    operator = await connect(sysop.guid)

    await operator.send({"type": "sysop_message", "message": "chat maintenance at noon", "realm": "$CHAT"})
    await operator.send({"type": "sysop_message", "message": "hello everyone"})

    assert (await inside.receive())["message"] == "chat maintenance at noon"
    assert (await inside.receive())["message"] == "hello everyone"
    assert await outside.receive() == {"type": "sysop_message", "message": "hello everyone"}


async def test_sysop_message_to_an_unknown_realm_is_an_error(default_realms, sysop, connect):
    operator = await connect(sysop.guid)

    await operator.send({"type": "sysop_message", "message": "hi", "realm": "$NOPE"})

    assert await operator.receive() == {"type": "error", "code": "unknown_realm", "message": "Unknown realm '$NOPE'."}
