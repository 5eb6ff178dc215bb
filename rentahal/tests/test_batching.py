"""How the coalescer batches the writes of jobs in flight on one event loop."""
import asyncio
import concurrent.futures
import threading

import pytest
from asgiref.sync import ThreadSensitiveContext, async_to_sync

from rentahal.batching import Coalescer


class Recorder:
    """A batch writer that keeps the batches it was given and can hold a write open."""

    def __init__(self, *, hold_first: bool = False):
        self.batches: list[list] = []
        self.writing = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.writing.set()
        self.release.wait(5)
        return [ValueError(f"refused {item}") if item == "bad" else f"stored {item}" for item in items]


async def wait_until_writing(recorder: Recorder) -> None:
    await asyncio.to_thread(recorder.writing.wait, 5)


async def test_a_lone_item_is_written_at_once_in_a_batch_of_its_own():
    recorder = Recorder()

    outcome = await asyncio.wait_for(Coalescer(recorder).submit("a"), timeout=1)

    assert outcome == "stored a"
    assert recorder.batches == [["a"]]


async def test_items_that_arrive_during_a_write_go_together_in_the_next_batch():
    recorder = Recorder(hold_first=True)
    coalescer = Coalescer(recorder)
    first = asyncio.create_task(coalescer.submit("a"))
    await wait_until_writing(recorder)

    later = [asyncio.create_task(coalescer.submit(item)) for item in ("b", "c", "d")]
    await asyncio.sleep(0.05)
    recorder.release.set()

    assert await first == "stored a"
    assert await asyncio.gather(*later) == ["stored b", "stored c", "stored d"]
    assert recorder.batches == [["a"], ["b", "c", "d"]]


async def test_an_item_refused_in_a_batch_fails_its_own_caller_only():
    recorder = Recorder(hold_first=True)
    coalescer = Coalescer(recorder)
    first = asyncio.create_task(coalescer.submit("a"))
    await wait_until_writing(recorder)
    later = [asyncio.create_task(coalescer.submit(item)) for item in ("b", "bad", "c")]
    await asyncio.sleep(0.05)
    recorder.release.set()

    outcomes = await asyncio.gather(first, *later, return_exceptions=True)

    assert outcomes[:2] == ["stored a", "stored b"] and outcomes[3] == "stored c"
    assert isinstance(outcomes[2], ValueError) and str(outcomes[2]) == "refused bad"
    assert recorder.batches == [["a"], ["b", "bad", "c"]]


async def test_a_batch_that_fails_as_a_whole_fails_its_callers_and_not_the_next_batch():
    calls = []

    def write(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("database gone")
        return [f"stored {item}" for item in items]

    coalescer = Coalescer(write)

    with pytest.raises(RuntimeError, match="database gone"):
        await coalescer.submit("a")
    assert await coalescer.submit("b") == "stored b"
    assert calls == [["a"], ["b"]]


async def test_a_caller_cancelled_before_its_batch_is_written_is_left_out_of_it():
    recorder = Recorder(hold_first=True)
    coalescer = Coalescer(recorder)
    first = asyncio.create_task(coalescer.submit("a"))
    await wait_until_writing(recorder)
    gone = asyncio.create_task(coalescer.submit("gone"))
    kept = asyncio.create_task(coalescer.submit("kept"))
    await asyncio.sleep(0.05)

    gone.cancel()
    recorder.release.set()

    assert (await first, await kept) == ("stored a", "stored kept")
    assert gone.cancelled()
    assert recorder.batches == [["a"], ["kept"]]


async def test_a_batch_is_written_on_the_db_lane_of_its_callers_context():
    """The worker bounds a process's database connections by running ORM calls on its lanes."""
    lane = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="lane-under-test")
    coalescer = Coalescer(lambda items: [threading.current_thread().name for _ in items])

    async with ThreadSensitiveContext(executor=lane):
        thread = await coalescer.submit("a")

    lane.shutdown()
    assert thread.startswith("lane-under-test")


def test_under_async_to_sync_each_job_is_a_batch_of_one():
    """The stock RQ worker runs each job in an event loop of its own, one job at a time."""
    recorder = Recorder()
    coalescer = Coalescer(recorder)

    outcomes = [async_to_sync(coalescer.submit)(item) for item in ("a", "b")]

    assert outcomes == ["stored a", "stored b"]
    assert recorder.batches == [["a"], ["b"]]
