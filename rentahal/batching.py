"""Coalesce the database writes of coroutine jobs in flight on one event loop into batches.

The concurrent worker (`rentahal.worker`) runs hundreds of jobs on one loop, and each used
to pay its own round trips for the same few statements. A `Coalescer` lets them share: a
lone item is written at once; items that arrive while a batch is being written wait and go
together in the next one. Batches therefore grow with the load, with no timer and no added
latency when the process is idle.
"""
import asyncio
import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from asgiref.sync import sync_to_async


@dataclasses.dataclass(eq=False)
class _Entry:
    item: Any
    future: asyncio.Future
    # The submitter's context: a batch runs in the context of one of its callers, so its
    # thread-sensitive call goes to that caller's DB lane (or, under `async_to_sync`, back
    # to the caller's own thread), exactly as the caller's own `sync_to_async` would.
    context: contextvars.Context


@dataclasses.dataclass(eq=False)
class _LoopState:
    pending: list[_Entry] = dataclasses.field(default_factory=list)
    writer: asyncio.Task | None = None


class Coalescer:
    """Collect items from concurrent callers and write them with one call of `write_batch`.

    `write_batch(items)` is synchronous (it runs the ORM) and returns one outcome per item,
    in order; an outcome that is an exception is raised to that item's caller alone, and an
    exception raised by `write_batch` itself reaches every caller of the batch. One batch at
    a time is written per event loop. A caller cancelled before its batch is written is left
    out of it; one cancelled during the write is not: the write goes on, as a cancelled
    `sync_to_async` call's thread does.

    State is kept per event loop, so the stock RQ worker, which runs each job in a loop of
    its own, works too: there every batch is simply of one.
    """

    def __init__(self, write_batch: Callable[[list], Sequence]):
        self.write_batch = write_batch
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}

    async def submit(self, item):
        """Write `item` in the next batch and return its outcome (or raise its exception)."""
        loop = asyncio.get_running_loop()
        state = self._states.setdefault(loop, _LoopState())
        entry = _Entry(item, loop.create_future(), contextvars.copy_context())
        state.pending.append(entry)
        if state.writer is None:
            self._start_writer(loop, state)
        return await entry.future

    def _start_writer(self, loop: asyncio.AbstractEventLoop, state: _LoopState) -> None:
        """Start writing the pending items, or forget the loop's state if none is left."""
        state.pending = [entry for entry in state.pending if not entry.future.done()]
        if not state.pending:
            state.writer = None
            self._states.pop(loop, None)
            return
        owner = state.pending[0]
        state.writer = loop.create_task(self._write(loop, state, owner), context=owner.context)

    async def _write(self, loop: asyncio.AbstractEventLoop, state: _LoopState, owner: _Entry) -> None:
        if owner.future.done():
            # The caller whose context this task runs in was cancelled after the task was
            # created: its DB lane may be gone, so another waiting caller writes instead.
            self._start_writer(loop, state)
            return
        batch = [entry for entry in state.pending if not entry.future.done()]
        state.pending = []
        try:
            outcomes = await sync_to_async(self.write_batch)([entry.item for entry in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{self.write_batch.__qualname__} returned {len(outcomes)} outcomes for {len(batch)} items")
        except asyncio.CancelledError:
            # Only a loop being torn down cancels the writer; its callers must not wait on.
            for entry in batch + state.pending:
                entry.future.cancel()
            self._states.pop(loop, None)
            raise
        except Exception as exc:  # noqa: BLE001 - the batch's callers each get the error
            outcomes = [exc] * len(batch)
        for entry, outcome in zip(batch, outcomes):
            if entry.future.done():
                continue
            if isinstance(outcome, BaseException):
                entry.future.set_exception(outcome)
            else:
                entry.future.set_result(outcome)
        self._start_writer(loop, state)
