"""One aiohttp session per long-lived process, so model calls reuse their connections.

The concurrent worker installs a session for its whole run (`process_session`); code that
calls model servers takes it with `model_session`, which opens a one-off session when none is
installed (a job run by a stock RQ worker, a test, a management command). Both connect only
where the outbound address policy allows (`rentahal.outbound.GuardedConnector`), so a
worker's name cannot resolve to a refused address between registration and the call.
"""
import contextlib
import contextvars

import aiohttp

from rentahal.outbound import guarded_session

_installed: contextvars.ContextVar[aiohttp.ClientSession | None] = contextvars.ContextVar(
    "rentahal_http_session", default=None
)


@contextlib.asynccontextmanager
async def process_session():
    """Open the process's session and install it for everything run inside the block.

    The connector is uncapped: its default limit would otherwise hold the process at 100
    model calls in flight.
    """
    async with guarded_session(limit=0, limit_per_host=0) as session:
        token = _installed.set(session)
        try:
            yield session
        finally:
            _installed.reset(token)


@contextlib.asynccontextmanager
async def model_session():
    """Yield the installed session, or a one-off session closed after the block."""
    session = _installed.get()
    if session is not None:
        yield session
        return
    async with guarded_session() as session:
        yield session
