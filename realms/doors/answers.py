"""A query submitted over HTTP, and its answer: the door subscribes to the user's pushes
(the group every /ws socket of the user joins) before accepting the query, so no chunk is
missed, and answers from the query's final frame, which carries everything a door tells
its caller (the text, the charge, the token counts). A push lost on the way is made up for
by looking at the row, the record, whenever the pushes fall silent."""
import asyncio
from collections.abc import AsyncIterator

from channels.layers import get_channel_layer

from accounts.models import Query
from realms import lifecycle
from realms.frames import QuerySubmission
from rentahal.db_threads import on_db_thread
from rentahal.pushes import user_group

# Seconds without a push for this query before the door looks at its row.
SILENCE_SECONDS = 2.0
FINAL_FRAMES = frozenset({"query_result", "transcription_result", "speech_result", "error"})


def read_query(query_id: str) -> Query:
    return Query.objects.get(pk=query_id)


class Submission:
    """One query of a door, from before its acceptance to its row's last state.

    Use as `async with Submission(guid) as submitted:`; leaving it unsubscribes.
    """

    def __init__(self, guid: str):
        self.guid = guid
        self.layer = get_channel_layer()
        self.channel = ""
        self.query_id = ""
        # The query's last frame (`lifecycle.final_frame`), once it is over.
        self.final: dict | None = None
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.reader: asyncio.Task | None = None

    async def __aenter__(self) -> "Submission":
        self.channel = await self.layer.new_channel()
        await self.layer.group_add(user_group(self.guid), self.channel)
        self.reader = asyncio.create_task(self.read_pushes())
        return self

    async def __aexit__(self, *exc_info) -> None:
        # The layer drops a channel (its queue and its Redis subscription) when a receive on
        # it is cancelled; it has no other way to. So one receive runs for the
        # submission's whole life, and is cancelled at its end.
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)
        await self.layer.group_discard(user_group(self.guid), self.channel)

    async def read_pushes(self) -> None:
        while True:
            self.inbox.put_nowait(await self.layer.receive(self.channel))

    async def accept(self, submission: QuerySubmission) -> str:
        """Accept the query (the one accept of every door) and return its id."""
        # The conversation a /v1 request named keeps it on one member of an `affinity` pool.
        conversation_id = submission.options.get("conversation", "")
        frame = await on_db_thread(lifecycle.accept_query)(self.guid, submission, conversation_id=conversation_id)
        self.query_id = frame["query_id"]
        # A resubmitted idempotency key may name a query that is already over.
        if frame["type"] in FINAL_FRAMES:
            self.final = frame
        return self.query_id

    async def chunks(self) -> AsyncIterator[str]:
        """Yield the answer's text as the worker streams it, until the query is over."""
        while self.final is None:
            try:
                event = await asyncio.wait_for(self.inbox.get(), SILENCE_SECONDS)
            except TimeoutError:
                query = await on_db_thread(read_query)(self.query_id)
                if query.status in Query.FINISHED:
                    self.final = lifecycle.final_frame(query)
                continue
            frame = event.get("frame") or {}
            if frame.get("query_id") != self.query_id:
                continue
            if frame.get("type") == "query_chunk":
                yield frame["chunk"]
            elif frame.get("type") in FINAL_FRAMES:
                self.final = frame

    async def outcome(self) -> dict:
        """Wait for the query to be over and return its final frame: its result (with `usage`,
        the server's token counts) or its failure's `error`."""
        async for _ in self.chunks():
            pass
        return self.final
