"""The housekeeping loop every `--every N` command shares (rentahal.housekeeping)."""
import io
import time

import pytest
from django.core.management import call_command

from rentahal.housekeeping import HousekeepingCommand


class Stopped(Exception):
    """Ends the endless loop after the rounds a test wants, as Ctrl-C would."""


class CountingCommand(HousekeepingCommand):
    """Prints the time each round starts; the third round takes longer than the interval."""

    def __init__(self, rounds: int, slow_round: float = 0.0):
        super().__init__(stdout=io.StringIO())
        self.rounds, self.slow_round, self.started = rounds, slow_round, []

    def run_round(self, *, repeating: bool, **options) -> None:
        self.started.append(time.monotonic())
        self.stdout.write(f"round {len(self.started)} repeating={repeating}")
        if len(self.started) == self.rounds:
            raise Stopped
        if len(self.started) == 2:
            time.sleep(self.slow_round)


def test_without_every_a_command_does_one_round_and_returns():
    command = CountingCommand(rounds=99)

    call_command(command)

    assert command.stdout.getvalue() == "round 1 repeating=False\n"


def test_with_every_rounds_start_that_many_seconds_apart():
    command = CountingCommand(rounds=3)

    with pytest.raises(Stopped):
        call_command(command, every=0.3)

    first, second, third = command.started
    assert 0.29 <= second - first < 0.6
    assert 0.29 <= third - second < 0.6
    assert "round 3 repeating=True" in command.stdout.getvalue()


def test_a_round_longer_than_the_interval_is_followed_at_once():
    command = CountingCommand(rounds=3, slow_round=1.0)

    with pytest.raises(Stopped):
        call_command(command, every=0.5)

    # Sleeping the interval after the slow round would put the next one 1.5 s after it.
    assert command.started[2] - command.started[1] < 1.3
