"""Users of a chaos run: each holds one /ws socket at a time (reconnecting when it drops, as
the classic page does), submits its planned queries with an idempotency key each, and logs
every frame it sends and reads. What each user learned is checked afterwards (checks.py).

A user learns a query's outcome from a push (`query_result`, or an `error` naming the query)
or, when none came within `POLL_SECONDS` or its socket was replaced, by sending the same
submission again: the broker answers a known key with the query's frame (docs/protocol.md
§1), never a second query.
"""
import asyncio
import dataclasses
import time

import orjson
import websockets

# A socket answers a submit_query within this many seconds or is taken for dead.
ANSWER_TIMEOUT_SECONDS = 20.0
# An acked query with no news for this long is asked about again (its push may be lost).
POLL_SECONDS = 8.0
# Pause before reconnecting a dropped socket (the classic page waits 2 s) and after a
# refusal that says to come back, unless it names its own retry_after.
RECONNECT_SECONDS = 1.0
RETRY_SECONDS = 1.0
# Refusals that mean "not now": the submission is sent again with the same key.
RETRYABLE_CODES = {"too_many_queries", "temporarily_unavailable", "shard_moving", "not_accepted", "unavailable"}
OUTCOME_TYPES = {"query_result", "error"}


@dataclasses.dataclass
class Planned:
    """One query a user will ask: its idempotency key, frame body, and when (run seconds)."""

    key: str
    query: dict
    at: float


@dataclasses.dataclass
class Tracked:
    """What the user knows about one planned query."""

    planned: Planned
    query_id: str | None = None
    first_sent: float | None = None
    acked_at: float | None = None
    outcome: dict | None = None
    outcome_at: float | None = None
    outcome_by: str = ""  # "push" or "resubmit"
    refusal: dict | None = None
    resubmits: int = 0
    refusals: dict = dataclasses.field(default_factory=dict)
    # Any other query id the broker ever named for this key (checked: there must be none).
    other_ids: list = dataclasses.field(default_factory=list)


class User:
    def __init__(self, index: int, guid: str, plan: list[Planned], *, url: str, clock, depth: int, log: list):
        self.index = index
        self.guid = guid
        self.url = url
        self.clock = clock
        self.depth = depth
        self.log = log
        self.tracked = {planned.key: Tracked(planned) for planned in plan}
        self.by_id: dict[str, Tracked] = {}
        self.pushes: dict[str, list[dict]] = {}
        self.socket = None
        self.socket_number = 0
        self.connected = asyncio.Event()
        self.pending: tuple[Tracked, asyncio.Future] | None = None
        self.submitting = asyncio.Lock()
        self.news = {planned.key: asyncio.Event() for planned in plan}
        self.closes: list[dict] = []
        self.stopping = False

    # -- the socket -----------------------------------------------------------------------

    def record(self, direction: str, frame: dict) -> None:
        self.log.append({"t": round(self.clock(), 4), "user": self.index, "socket": self.socket_number, "dir": direction, "frame": frame})

    async def keep_connected(self) -> None:
        """Hold a greeted socket open, reconnecting whenever it drops, until the user stops."""
        while not self.stopping:
            try:
                async with websockets.connect(
                    self.url, additional_headers={"Cookie": f"user_guid={self.guid}"}, open_timeout=30,
                    close_timeout=2, max_size=None, ping_interval=None,
                ) as socket:
                    self.socket_number += 1
                    self.socket = socket
                    await self.read(socket)
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
                refused = exc.response.status_code if isinstance(exc, websockets.InvalidStatus) else None
                self.closes.append({"t": self.clock(), "socket": self.socket_number, "error": repr(exc)[:200], "status": refused})
            self.socket = None
            self.connected.clear()
            self.fail_pending()
            # Every query whose push may have gone with the socket is asked about again.
            for event in self.news.values():
                event.set()
            if not self.stopping:
                await asyncio.sleep(RECONNECT_SECONDS)

    async def read(self, socket) -> None:
        try:
            async for raw in socket:
                frame = orjson.loads(raw)
                self.record("in", frame)
                if frame.get("type") == "huggingface_update":
                    # The greeting's last frame: the socket is in the user's group from here on.
                    self.connected.set()
                self.take(frame)
        except websockets.ConnectionClosed as closed:
            self.closes.append({"t": self.clock(), "socket": self.socket_number, "code": closed.rcvd.code if closed.rcvd else None})
            return
        self.closes.append({"t": self.clock(), "socket": self.socket_number, "code": socket.close_code})

    def fail_pending(self) -> None:
        if self.pending is not None and not self.pending[1].done():
            self.pending[1].set_result(None)

    def take(self, frame: dict) -> None:
        """Route a frame: the answer to the submission in flight, or a push."""
        kind = frame.get("type")
        query_id = frame.get("query_id")
        if self.pending is not None and not self.pending[1].done():
            tracked, answer = self.pending
            is_answer = kind == "queue_update" or (kind == "error" and not query_id) or (
                kind in OUTCOME_TYPES and query_id and (query_id == tracked.query_id or query_id not in self.by_id)
            )
            if is_answer:
                answer.set_result(frame)
                return
        if kind in OUTCOME_TYPES and query_id:
            self.pushes.setdefault(query_id, []).append(frame)
            tracked = self.by_id.get(query_id)
            if tracked is not None:
                self.learn(tracked, frame, "push")

    def learn(self, tracked: Tracked, frame: dict, how: str) -> None:
        if tracked.outcome is None:
            tracked.outcome, tracked.outcome_at, tracked.outcome_by = frame, self.clock(), how
        self.news[tracked.planned.key].set()

    async def send(self, frame: dict) -> bool:
        socket = self.socket
        if socket is None or not self.connected.is_set():
            return False
        self.record("out", frame)
        try:
            await socket.send(orjson.dumps(frame).decode())
        except websockets.WebSocketException:
            return False
        return True

    # -- one query ------------------------------------------------------------------------

    async def submit(self, tracked: Tracked) -> dict | None:
        """Send the query's submission (again) and return the broker's answer, or None if
        the socket went away first."""
        async with self.submitting:
            await self.connected.wait()
            answer = asyncio.get_running_loop().create_future()
            self.pending = (tracked, answer)
            frame = {"type": "submit_query", "query": tracked.planned.query, "idempotency_key": tracked.planned.key}
            if tracked.first_sent is None:
                tracked.first_sent = self.clock()
            else:
                tracked.resubmits += 1
            if not await self.send(frame):
                return None
            try:
                return await asyncio.wait_for(answer, ANSWER_TIMEOUT_SECONDS)
            except asyncio.TimeoutError:
                return None
            finally:
                self.pending = None

    async def ask(self, tracked: Tracked, deadline: float) -> None:
        """Submit until the broker acks or answers, then wait for the outcome, asking again
        when no news comes, until the outcome is known or the run's deadline passes."""
        news = self.news[tracked.planned.key]
        while tracked.outcome is None and tracked.refusal is None and self.clock() < deadline:
            if tracked.query_id is not None:
                try:
                    await asyncio.wait_for(news.wait(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    pass
                news.clear()
                if tracked.outcome is not None or self.clock() >= deadline:
                    break
            answer = await self.submit(tracked)
            if answer is None:
                continue
            kind, code = answer.get("type"), answer.get("code")
            if kind == "queue_update" or (kind in OUTCOME_TYPES and answer.get("query_id")):
                self.note_query_id(tracked, answer["query_id"])
                if kind in OUTCOME_TYPES:
                    self.learn(tracked, answer, "resubmit")
                continue
            tracked.refusals[code] = tracked.refusals.get(code, 0) + 1
            if code in RETRYABLE_CODES:
                await asyncio.sleep(float(answer.get("retry_after") or RETRY_SECONDS))
                continue
            tracked.refusal = answer

    def note_query_id(self, tracked: Tracked, query_id: str) -> None:
        if tracked.query_id is None:
            tracked.query_id = query_id
            tracked.acked_at = self.clock()
            self.by_id[query_id] = tracked
        elif tracked.query_id != query_id:
            tracked.other_ids.append(query_id)

    async def run(self, start_deadline: float, deadline: float) -> None:
        """Ask every planned query at its time, with at most `depth` of them unanswered."""
        connection = asyncio.create_task(self.keep_connected())
        slots = asyncio.Semaphore(self.depth)

        async def one(tracked: Tracked) -> None:
            await asyncio.sleep(max(0.0, tracked.planned.at - self.clock()))
            async with slots:
                if self.clock() < start_deadline:
                    await self.ask(tracked, deadline)

        try:
            await asyncio.gather(*(one(tracked) for tracked in self.tracked.values()))
        finally:
            self.stopping = True
            if self.socket is not None:
                await self.socket.close()
            connection.cancel()
            await asyncio.gather(connection, return_exceptions=True)
