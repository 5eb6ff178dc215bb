"""Database calls from async code, on threads that look after their own connections.

channels' `database_sync_to_async` sends every call of a process to one thread, so a web
process serving many sockets queued all their round trips behind each other (accepting
queries was 80 % of daphne's samples at 32 clients, almost all of it waiting on Postgres).
Here each of `RENTAHAL_DB_THREADS` threads keeps its own connection, and a call runs on
whichever thread is free. A consumer still handles its own frames one at a time, so a
socket's calls keep their order.

`database_sync_to_async` also closes stale connections around every call, which with
`CONN_HEALTH_CHECKS` costs a `SELECT 1` round trip per call. Here a connection is checked
only after a call failed on it, and closed once it outlives `CONN_MAX_AGE`.
"""
import concurrent.futures
import functools
import time

from asgiref.sync import SyncToAsync
from django.conf import settings
from django.db import DatabaseError, close_old_connections, connections


class DatabaseThreads(concurrent.futures.ThreadPoolExecutor):
    """A thread pool whose every call drops a connection that broke under it and closes one
    past `CONN_MAX_AGE`: long-lived processes (daphne, the realm worker's DB lanes) would
    otherwise keep failing on a dead connection after a Postgres restart."""

    def submit(self, function, /, *args, **kwargs):
        return super().submit(call_with_fresh_connections, function, *args, **kwargs)


@functools.cache
def executor() -> DatabaseThreads:
    return DatabaseThreads(max_workers=settings.RENTAHAL_DB_THREADS, thread_name_prefix="db")


def on_db_thread(function):
    """Return an async callable that runs the sync `function` on one of the DB threads."""
    return SyncToAsync(function, thread_sensitive=False, executor=executor())


def call_with_fresh_connections(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except DatabaseError:
        # Drops a connection that broke (a Postgres restart); the next call opens a new one.
        close_old_connections()
        raise
    finally:
        for connection in connections.all(initialized_only=True):
            if connection.close_at is not None and time.monotonic() >= connection.close_at and not connection.in_atomic_block:
                connection.close()
