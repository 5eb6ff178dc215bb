"""Serve one model request: pick a worker, call it in its wire format, report the outcome."""
import contextlib
import contextvars
import dataclasses
import logging

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings

from pools.clients import CallLimits, ChunkCallback, ModelAnswer, ModelRequest, client_for
from pools.selection import select_worker

logger = logging.getLogger(__name__)

# A long-lived process (the concurrent worker) installs one session so connections to
# model servers are reused across queries; a one-off job opens its own.
shared_session: contextvars.ContextVar[aiohttp.ClientSession | None] = contextvars.ContextVar(
    "shared_session", default=None
)


@dataclasses.dataclass(frozen=True)
class Served:
    worker: str
    answer: ModelAnswer


def call_limits() -> CallLimits:
    return CallLimits(
        connect_timeout=settings.RENTAHAL_CONNECT_TIMEOUT,
        read_timeout=settings.RENTAHAL_READ_TIMEOUT,
        max_answer_bytes=settings.RENTAHAL_MAX_ANSWER_BYTES,
    )


@contextlib.asynccontextmanager
async def model_session():
    session = shared_session.get()
    if session is not None:
        yield session
        return
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(
    request: ModelRequest, *, realm: str, affinity_key: str = "", on_chunk: ChunkCallback | None = None
) -> Served:
    """Return the answer of the worker chosen for the request in `realm`.

    `affinity_key` (a conversation id, else the user's guid) lets a pool keep one
    conversation on one model server.

    Raises NoWorkerAvailable when nobody can serve, ModelServerError when the call failed.
    """
    worker = await sync_to_async(select_worker)(request.query_type)
    async with model_session() as session:
        answer = await client_for(worker.wire_format).call(
            session, worker, request, limits=call_limits(), on_chunk=on_chunk
        )
    return Served(worker=worker.name, answer=answer)
