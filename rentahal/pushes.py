"""The one way a change reaches open sockets and subscribers: channel-layer groups and the
events sent to them. Best effort by design (channel layers drop messages); Postgres stays
the record, and a subscriber that missed an event re-reads what it shows.

Actions publish what they changed with `send_event_on_commit`, never before their
transaction commits (Zulip's `send_event_on_commit`), so no one is told of a change that was
rolled back or sees the old rows when it re-reads. Callers are sync code, on any thread.

Groups and their events (an event's `type` names the consumer method that handles it,
dots becoming underscores):

| group | event | sent when |
|---|---|---|
| `user.<guid>` (`user_group`) | `send.frame` `{"frame": {...}}` | a job pushes a frame to every tab of the user |
| `user.<guid>` | `send.frame` `{"frame": {"type": "query_chunk", "query_id", "chunk"}}` | the next piece of a streamed answer (`stream_query_chunks`) |
| `user.<guid>` | `user.banned` | the user was banned: each socket sends `user_banned` and the ban's `error`, and closes |
| `user.<guid>` | `send.frame` `{"frame": {"type": "user_unbanned"}}` | the user was unbanned |
| `broadcast` (`BROADCAST_GROUP`) | `send.frame` `{"frame": {...}}` | every open /ws socket: `worker_update`, `sysop_message` |
| | `send.frame` `{"frame": {...}, "sysop_frame": {...}}` | as above, sysops' sockets sending `sysop_frame` instead (`worker_update` with addresses) |
| `user.<guid>` | `user.changed` | the user's sysop flag changed: each socket re-reads the user and sends `user_info` |
| `sysops` (`SYSOP_GROUP`) | `send.frame` `{"frame": {...}}` | every sysop's open /ws socket (`alert_sysops`): `worker_alert`, `realm_alert` |
| `events.pools` (`POOL_EVENTS`) | `worker.changed`, `pool.changed` | a worker or a pool alias was saved or deleted |
| `events.realms` (`REALM_EVENTS`) | `realm.changed` | a realm or its backups were saved, or it was deleted |
| `events.pools` | `worker.health` | a health probe answered or not (`op` `heartbeat`), or the health rules blacklisted or restored a worker (`op` `blacklisted`, `restored`) |
| `events.queries` (`QUERY_EVENTS`) | `queries.changed` | queries were accepted, started, completed or failed (`op`), listed in `queries` (one event per batch the worker wrote) |

A `*.changed` event reads `{"type": ..., "op": "saved" | "deleted", "name": ..., "by": ...}`
(`by` from `rentahal.actors.describe_actor`; a pool adds its `realm`, and `op` is `created`,
`saved`, `scaled` with the members `added` and `removed`, or `deleted`): enough for a staff
dashboard or an agent tool that joined the group to re-read the one object that changed.

Query events come with every query, so they are published only while someone listens
(`is_listened`): a subscriber marks its groups listened (`mark_listened`) and renews the
mark; a publisher reads the mark at most once a second per process, so the query path pays
nothing while no one subscribes.
"""
import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import redis
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)

BROADCAST_GROUP = "broadcast"
POOL_EVENTS = "events.pools"
REALM_EVENTS = "events.realms"
QUERY_EVENTS = "events.queries"
# A subscriber's mark lasts this long; it renews it at a third of that.
LISTENED_TTL_SECONDS = 30
# How long a publisher trusts what it read of a group's mark.
LISTENED_CACHE_SECONDS = 1.0
# Only sysops' sockets join it (realms/consumers.py), on connect and when a user is made sysop.
SYSOP_GROUP = "sysops"


def user_group(guid: str) -> str:
    """Return the channel-layer group every socket of this user joins."""
    return f"user.{guid}"


async def push_frame(guid: str, frame: dict) -> None:
    """Send a frame to all of a user's sockets."""
    await get_channel_layer().group_send(user_group(guid), {"type": "send.frame", "frame": frame})


@contextlib.asynccontextmanager
async def stream_query_chunks(guid: str, query_id: str) -> AsyncIterator[Callable[[str], Awaitable[None]]]:
    """Yield the function that streams a query's answer, piece by piece, to all of its user's
    sockets and subscribers as `query_chunk` frames; leaving the block sends what is left.

    This is the one way a piece of an answer is pushed. A model server may send a token a
    frame; a push per token costs a channel-layer message each (about 0.3 ms of CPU on a
    small box, MEASURED.md), so the pieces are gathered (`ChunkCoalescer`): the first goes
    at once, the rest at most every RENTAHAL_CHUNK_PUSH_SECONDS, or sooner once
    RENTAHAL_CHUNK_PUSH_CHARS are waiting. Receivers see the same text, in order.
    """
    async def push(text: str) -> None:
        await push_frame(guid, {"type": "query_chunk", "query_id": query_id, "chunk": text})

    coalescer = ChunkCoalescer(push, window=settings.RENTAHAL_CHUNK_PUSH_SECONDS, max_chars=settings.RENTAHAL_CHUNK_PUSH_CHARS)
    try:
        yield coalescer.add
    except BaseException:
        coalescer.abandon()
        raise
    await coalescer.close()


class ChunkCoalescer:
    """Pieces of one answer, sent as few pushes: a piece that arrives when nothing was sent
    for `window` seconds goes at once; pieces arriving within a window of the last push wait
    for its end (or for `max_chars` of them) and go together.

    Sending happens on a task of its own, so the model server's stream is read on while a
    push is under way, and one push follows another: the text arrives in order. A push that
    fails is logged and its text dropped (pushes are best effort; the stored answer and its
    `query_result` carry the whole text).
    """

    def __init__(self, send: Callable[[str], Awaitable[None]], *, window: float, max_chars: int):
        self.send = send
        self.window = window
        self.max_chars = max_chars
        self._pending: list[str] = []
        self._chars = 0
        self._closing = False
        self._wake = asyncio.Event()
        self._sender: asyncio.Task | None = None

    async def add(self, text: str) -> None:
        if not text:
            return
        self._pending.append(text)
        self._chars += len(text)
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_pending())
        elif self._chars >= self.max_chars:
            self._wake.set()

    async def _send_pending(self) -> None:
        try:
            while self._pending:
                text = "".join(self._pending)
                self._pending.clear()
                self._chars = 0
                try:
                    await self.send(text)
                except Exception:
                    logger.warning("could not push %d characters of a streamed answer", len(text), exc_info=True)
                if self._closing or self._chars >= self.max_chars:
                    continue
                # The window after a push: what arrives meanwhile goes with the next one.
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.window):
                        await self._wake.wait()
        finally:
            self._sender = None

    async def close(self) -> None:
        """Send what is still waiting, now, and return once every piece has been pushed."""
        self._closing = True
        self._wake.set()
        if self._sender is not None:
            await self._sender

    def abandon(self) -> None:
        """Stop sending: the answer failed or its job was cancelled."""
        if self._sender is not None:
            self._sender.cancel()


def frame_event(frame: dict, *, sysop_frame: dict | None = None) -> dict:
    """Return the event that has every socket of a group send `frame` as it is, or, on a
    sysop's socket, `sysop_frame` when given (what only sysops may see)."""
    event = {"type": "send.frame", "frame": frame}
    if sysop_frame is not None:
        event["sysop_frame"] = sysop_frame
    return event


def send_event_on_commit(group: str, event: dict | Callable[[], dict], *, using: str, if_listened: bool = False) -> None:
    """Send `event` to `group` once the transaction on `using` commits (at once outside one).

    Give a callable to build the event after the commit, from the committed rows (the
    worker list of a `worker_update`). A failed send is logged, never raised: the change it
    reports has already committed. `if_listened` sends it only while a subscriber listens
    to the group (`is_listened`), for events as frequent as queries.
    """

    def send() -> None:
        if not if_listened or is_listened(group):
            send_event(group, event() if callable(event) else event)

    transaction.on_commit(send, using=using, robust=True)


_listened: dict[str, tuple[float, bool]] = {}
_listened_lock = threading.Lock()
_redis_client = None


def _redis() -> redis.Redis:
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    return _redis_client


def listened_key(group: str) -> str:
    return f"rentahal:listened:{group}"


def is_listened(group: str) -> bool:
    """Return whether a subscriber marked `group` listened lately; read from Redis at most
    once every LISTENED_CACHE_SECONDS per process, and taken as unheard if Redis fails."""
    now = time.monotonic()
    checked_at, listened = _listened.get(group, (-LISTENED_CACHE_SECONDS, False))
    if now - checked_at < LISTENED_CACHE_SECONDS:
        return listened
    try:
        listened = bool(_redis().exists(listened_key(group)))
    except redis.RedisError:
        listened = False
    with _listened_lock:
        _listened[group] = (now, listened)
    return listened


def mark_listened(groups: list[str]) -> None:
    """Mark the groups listened for LISTENED_TTL_SECONDS (a subscriber renews the mark)."""
    with _redis().pipeline(transaction=False) as pipeline:
        for group in groups:
            pipeline.set(listened_key(group), 1, ex=LISTENED_TTL_SECONDS)
        pipeline.execute()


def send_event(group: str, event: dict) -> None:
    """Send `event` to `group` from sync code: on the caller's event loop when it is a
    consumer's database thread, on a loop of its own from a command or a job."""
    async_to_sync(get_channel_layer().group_send)(group, event)
    logger.debug("sent %s to %s", event["type"], group)


def alert_sysops(frame: dict) -> None:
    """Send `frame` to every sysop's open socket now, from sync code.

    Alerts report runtime health, kept in Redis, not a database change: there is no commit
    to wait for. A failed send is logged, never raised, because the caller is a health round
    or a query's bookkeeping, which must go on whether or not anyone could be told.
    """
    try:
        send_event(SYSOP_GROUP, frame_event(frame))
    except Exception:
        logger.exception("could not alert sysops: %s", frame)
