"""One aiohttp session per long-lived process, so model calls reuse their connections.

The concurrent worker installs a session for its whole run (`process_session`); code that
calls model servers takes it with `model_session`, which opens a one-off session when none is
installed (a job run by a stock RQ worker, a test, a management command).
"""
import contextlib
import contextvars

import aiohttp

_installed: contextvars.ContextVar[aiohttp.ClientSession | None] = contextvars.ContextVar(
    "rentahal_http_session", default=None
)


@contextlib.asynccontextmanager
async def process_session():
    """Open the process's session and install it for everything run inside the block.

    The connector is uncapped: its default limit would otherwise hold the process at 100
    model calls in flight.
    """
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:
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
    async with aiohttp.ClientSession() as session:
        yield session
