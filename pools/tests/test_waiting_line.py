"""The line queries wait in while a pool is busy (pools.waiting): users take turns, and a
waiter whose process died does not hold the line."""
import time

from pools.waiting import Line


def place(party: str, waiter: str, ttl: float = 5.0) -> Line:
    return Line("$CHAT:chat:worker_node:", party=party, waiter=waiter, ttl=ttl)


def test_a_users_first_waiting_query_stands_before_another_users_second():
    alices = [place("alice", f"a{number}") for number in range(3)]
    for line in alices:
        line.rank()
    bobs = place("bob", "b0")

    assert bobs.rank() == 1
    assert [line.rank() for line in alices] == [0, 2, 3]


def test_the_next_in_line_moves_up_when_the_head_leaves():
    head, next_in_line = place("alice", "a0"), place("bob", "b0")
    head.rank()
    next_in_line.rank()

    head.leave()

    assert next_in_line.rank() == 0


def test_a_place_its_waiter_stopped_renewing_no_longer_holds_the_line():
    dead, alive = place("alice", "a0", ttl=0.05), place("bob", "b0")
    assert (dead.rank(), alive.rank()) == (0, 1)

    time.sleep(0.2)

    assert alive.rank() == 0
