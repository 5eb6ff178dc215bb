"""The event stream for staff and agents (`/ws/events`): pool lifecycle, worker health and
query events, as published by the actions (rentahal.pushes), filtered per subscriber.

A subscriber sends `{"type": "subscribe", "pools": [...], "realms": [...], "events": [...]}`
(each list optional; empty means all) and receives `{"type": "event", "event": ..., ...}`
frames. Each socket holds at most RENTAHAL_EVENT_BUFFER frames not yet sent: one that falls
further behind is dropped (closed with 4008), so a slow subscriber costs its own process a
bounded buffer and never delays anyone else. Publishers never wait for subscribers: an event
is one PUBLISH to Redis whoever listens.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from realms.agents.callers import Caller, NotAuthenticated, authenticate_token, bearer_token, caller_of
from rentahal.db_threads import on_db_thread
from rentahal.errors import BrokerError, error_frame
from rentahal.pushes import LISTENED_TTL_SECONDS, POOL_EVENTS, QUERY_EVENTS, REALM_EVENTS, mark_listened

logger = logging.getLogger(__name__)

GROUPS = (POOL_EVENTS, REALM_EVENTS, QUERY_EVENTS)
EVENT_NAMES = frozenset({
    "pool.created", "pool.saved", "pool.scaled", "pool.closed", "member.added", "member.removed",
    "member.blacklisted", "member.restored", "worker.heartbeat", "worker.saved", "worker.deleted",
    "realm.saved", "realm.deleted", "query.accepted", "query.started", "query.completed", "query.failed",
})
MAX_FILTER_ITEMS = 100
# Close codes in the private range: not staff, and fell too far behind.
FORBIDDEN = 4003
TOO_SLOW = 4008
POOL_OPS = {"created": "pool.created", "saved": "pool.saved", "scaled": "pool.scaled", "deleted": "pool.closed"}


def pool_frames(event: dict) -> list[dict]:
    common = {"pool": event["name"], "realm": event["realm"], "by": event["by"]}
    frames = [{"event": POOL_OPS[event["op"]], **common}]
    frames += [{"event": "member.added", "worker": name, **common} for name in event.get("added", ())]
    frames += [{"event": "member.removed", "worker": name, **common} for name in event.get("removed", ())]
    return frames


def worker_health_frames(event: dict) -> list[dict]:
    name = "worker.heartbeat" if event["op"] == "heartbeat" else f"member.{event['op']}"
    return [{"event": name, "worker": event["name"], "pools": event["pools"], "reason": event["reason"]}]


def query_frames(event: dict) -> list[dict]:
    return [{"event": f"query.{event['op']}", **query} for query in event["queries"]]


def frames_of(event: dict) -> list[dict]:
    """Return the public frames of one published event (rentahal.pushes lists them)."""
    kind = event["type"]
    if kind == "pool.changed":
        frames = pool_frames(event)
    elif kind == "worker.health":
        frames = worker_health_frames(event)
    elif kind == "queries.changed":
        frames = query_frames(event)
    elif kind == "worker.changed":
        frames = [{"event": f"worker.{event['op']}", "worker": event["name"], "by": event["by"]}]
    else:
        frames = [{"event": f"realm.{event['op']}", "realm": event["name"], "by": event["by"]}]
    return [{"type": "event", **frame} for frame in frames]


def parse_filter(content: dict, field: str, allowed: frozenset[str] | None = None) -> frozenset[str]:
    value = content.get(field, [])
    if not isinstance(value, list) or len(value) > MAX_FILTER_ITEMS or not all(isinstance(item, str) for item in value):
        raise BrokerError(f"Field '{field}' must be a list of at most {MAX_FILTER_ITEMS} names.", code="bad_field")
    unknown = sorted(set(value) - allowed) if allowed is not None else []
    if unknown:
        raise BrokerError(f"Unknown event types: {', '.join(name[:64] for name in unknown)}.", code="bad_field")
    return frozenset(value)


class EventConsumer(AsyncJsonWebsocketConsumer):
    """One staff or agent subscriber of the event groups."""

    caller: Caller | None = None
    pools: frozenset[str] = frozenset()
    realms: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()
    is_dropped = False

    async def connect(self):
        await self.accept()
        try:
            self.caller = await on_db_thread(self.authenticate)()
        except NotAuthenticated as exc:
            await self.send_json(error_frame(exc))
            await self.close(code=FORBIDDEN)
            return
        self.outbox: asyncio.Queue[dict] = asyncio.Queue(maxsize=settings.RENTAHAL_EVENT_BUFFER)
        self.sender = asyncio.create_task(self.send_outbox())
        self.renewer = asyncio.create_task(self.keep_listening())
        for group in GROUPS:
            await self.channel_layer.group_add(group, self.channel_name)

    def authenticate(self) -> Caller:
        """A staff session (the admin's login), else a staff token in the Authorization header."""
        user = self.scope.get("user")
        if user is not None and user.is_authenticated:
            return caller_of(user)
        headers = dict(self.scope.get("headers", []))
        return authenticate_token(bearer_token(headers.get(b"authorization", b"").decode("latin-1")))

    async def keep_listening(self):
        """Keep the groups marked listened, so frequent events are published (rentahal.pushes)."""
        while True:
            await asyncio.to_thread(mark_listened, [QUERY_EVENTS, POOL_EVENTS])
            await asyncio.sleep(LISTENED_TTL_SECONDS / 3)

    async def disconnect(self, code):
        if self.caller is None:
            return
        for task in (self.sender, self.renewer):
            task.cancel()
        for group in GROUPS:
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if self.caller is None:
            return
        try:
            if not isinstance(content, dict) or content.get("type") != "subscribe":
                raise BrokerError("Send {'type': 'subscribe', 'pools': [], 'realms': [], 'events': []}.", code="unknown_frame_type")
            self.pools = parse_filter(content, "pools")
            self.realms = parse_filter(content, "realms")
            self.events = parse_filter(content, "events", EVENT_NAMES)
        except BrokerError as exc:
            await self.send_json(error_frame(exc))
            return
        await self.send_json(
            {"type": "subscribed", "pools": sorted(self.pools), "realms": sorted(self.realms), "events": sorted(self.events)}
        )

    @classmethod
    async def decode_json(cls, text_data):
        try:
            return orjson.loads(text_data)
        except orjson.JSONDecodeError:
            return None

    @classmethod
    async def encode_json(cls, content):
        return orjson.dumps(content).decode()

    def wants(self, frame: dict) -> bool:
        if self.events and frame["event"] not in self.events:
            return False
        if self.pools and frame.get("pool") not in self.pools and not self.pools.intersection(frame.get("pools", ())):
            return False
        return not self.realms or frame.get("realm") in self.realms

    async def publish(self, event: dict):
        """Queue the event's frames this subscriber wants; drop the subscriber if it is too far behind."""
        if self.is_dropped:
            return
        for frame in frames_of(event):
            if not self.wants(frame):
                continue
            try:
                self.outbox.put_nowait(frame)
            except asyncio.QueueFull:
                logger.warning("event subscriber %s fell %d frames behind; dropped", self.channel_name, self.outbox.qsize())
                self.is_dropped = True
                await self.close(code=TOO_SLOW)
                return

    async def send_outbox(self):
        while True:
            await self.send_json(await self.outbox.get())

    worker_changed = pool_changed = realm_changed = worker_health = queries_changed = publish
