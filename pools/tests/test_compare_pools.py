"""`manage.py compare_pools $A $B`: the A/B report from recorded attempts."""
import pytest
from django.core.management import CommandError, call_command

from pools import actions
from pools.models import SelectionOutcome

pytestmark = pytest.mark.django_db


@pytest.fixture
def two_aliases(fake_server, register_worker):
    register_worker(fake_server, name="alpha")
    actions.create_pool("$CHAT_A", query_type="chat", members=["alpha"], strategy="round_robin")
    actions.create_pool("$CHAT_B", query_type="chat", members=["alpha"], strategy="latency")


def test_the_report_sets_two_aliases_side_by_side(two_aliases, capsys):
    SelectionOutcome.objects.create(pool="$CHAT_A", worker="alpha", strategy="round_robin", result="ok", duration=0.25)
    SelectionOutcome.objects.create(pool="$CHAT_B", worker="alpha", strategy="latency", result="timeout", duration=3.0)

    call_command("compare_pools", "$CHAT_A", "$CHAT_B")
    lines = capsys.readouterr().out.splitlines()

    assert lines[0].split() == ["$CHAT_A", "$CHAT_B"]
    assert lines[1].split() == ["strategy", "round_robin", "latency"]
    assert "error rate" in lines[4] and lines[4].split()[-2:] == ["0.000", "1.000"]
    assert lines[5].split()[-2:] == ["0.250", "-"]


def test_the_report_names_an_unknown_alias(two_aliases):
    with pytest.raises(CommandError, match=r"No pool alias named \$GHOST"):
        call_command("compare_pools", "$CHAT_A", "$GHOST")


def test_the_report_refuses_a_window_of_infinite_hours(two_aliases):
    with pytest.raises(CommandError, match="hours must be a number above 0"):
        call_command("compare_pools", "$CHAT_A", "$CHAT_B", "--hours", "inf")
