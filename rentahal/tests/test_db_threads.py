"""Database calls from async code: a persistent connection per DB thread, replaced when broken."""
import concurrent.futures

import pytest
from django.db import DatabaseError, connection, connections

from rentahal.db_threads import call_with_fresh_connections, on_db_thread

pytestmark = pytest.mark.django_db(transaction=True)


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


@pytest.fixture
def db_thread(monkeypatch):
    """One thread standing in for a DB thread, with connections kept as in production."""
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 60)
    thread = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def call(function):
        return thread.submit(call_with_fresh_connections, function).result()

    yield call
    thread.submit(connections.close_all).result()
    thread.shutdown()


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
