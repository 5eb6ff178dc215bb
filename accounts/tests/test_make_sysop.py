"""`manage.py make_sysop`: the operator names a fresh deployment's sysop, by nickname or guid."""
import io

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command

from accounts.models import User

pytestmark = pytest.mark.django_db


def make_sysop(*arguments: str) -> str:
    out = io.StringIO()
    call_command("make_sysop", *arguments, stdout=out)
    return out.getvalue()


def is_sysop(user: User) -> bool:
    return User.objects.using(user._state.db).get(pk=user.pk).is_sysop


def test_an_operator_makes_a_user_sysop_by_nickname(alice):
    output = make_sysop("alice")

    assert is_sysop(alice)
    assert output == f"alice ({alice.guid}) is now a sysop\n"


def test_an_operator_makes_a_user_sysop_by_guid(bob):
    make_sysop(bob.guid)

    assert is_sysop(bob)


def test_revoke_takes_sysop_away(sysop):
    make_sysop("sysop", "--revoke")

    assert not is_sysop(sysop)


def test_an_unknown_user_is_an_error_and_changes_nobody(alice):
    with pytest.raises(CommandError, match="No user with guid or nickname 'nobody'"):
        make_sysop("nobody")

    assert not is_sysop(alice)


@pytest.mark.django_db(transaction=True)
async def test_a_user_made_sysop_is_told_at_once_and_may_use_sysop_frames(alice, connect):
    tab = await connect(alice.guid)

    await sync_to_async(make_sysop)("alice")

    info = (await tab.receive_until("user_info"))[-1]
    assert info["data"]["is_sysop"] is True
    await tab.send({"type": "get_stats"})
    assert (await tab.receive())["type"] == "system_stats"
