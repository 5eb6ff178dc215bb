"""Database threads (daphne's, and the realm worker's DB lanes): a persistent connection per
thread, replaced when broken."""
import time

import pytest
from django.db import DatabaseError, connection, connections

from rentahal.db_threads import DatabaseThreads, on_db_thread

pytestmark = pytest.mark.django_db(transaction=True)


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def make_connection_obsolete() -> None:
    """As if the connection had been open for longer than CONN_MAX_AGE."""
    connection.close_at = time.monotonic() - 1


@pytest.fixture
def db_thread(monkeypatch):
    """One DB lane, as the realm worker has, with connections kept as in production."""
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 60)
    thread = DatabaseThreads(max_workers=1)

    def call(function):
        return thread.submit(function).result()

    yield call
    thread.submit(connections.close_all).result()
    thread.shutdown()


def test_a_connection_past_conn_max_age_is_closed_after_its_call_and_the_next_call_reconnects(db_thread):
    first = db_thread(backend_pid)

    db_thread(make_connection_obsolete)

    assert db_thread(backend_pid) != first


def test_a_db_thread_keeps_its_connection_between_calls(db_thread):
    assert db_thread(backend_pid) == db_thread(backend_pid)


def test_a_connection_postgres_dropped_fails_one_call_and_the_next_call_reconnects(db_thread):
    before = db_thread(backend_pid)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [before])

    with pytest.raises(DatabaseError):
        db_thread(backend_pid)
    after = db_thread(backend_pid)

    assert after != before


async def test_async_code_gets_the_result_of_a_call_on_a_db_thread():
    assert await on_db_thread(backend_pid)() > 0
