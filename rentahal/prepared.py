"""Hot statements, prepared: Postgres parses and plans each once per connection.

Django binds parameters on the client and turns psycopg's prepared statements off (for
connection poolers in transaction mode), so every statement is parsed and planned anew. On
the query path that is most of Postgres's work: the accept's INSERT spent 0.55 ms planning
for 0.25 ms of execution (pg_stat_statements, bench/README.md, session 6). The few
statements that run once per query use `prepared_cursor`; behind a pooler in transaction
mode (PgBouncer before 1.21) they would need its prepared-statement support.
"""
import contextlib
from collections.abc import Iterator

from django.db import connections
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.backends.utils import CursorWrapper


# psycopg's count of executions after which it prepares a statement unasked: never reached.
NEVER_BY_COUNT = 2**31 - 1


class PreparingCursor(ServerBindingCursor):
    """A psycopg cursor that binds on the server and prepares every statement it executes
    (psycopg keeps the prepared statements of a connection by their text)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)


@contextlib.contextmanager
def prepared_cursor(using: str) -> Iterator[CursorWrapper]:
    """Return a cursor of the database `using`, as `connections[using].cursor()` would (its
    execute wrappers, query log and Django's exceptions), whose statements are prepared.

    Parameters are bound by Postgres, so each needs a type it can infer: cast them in the
    SQL (`%s::uuid[]`) where the context does not say.
    """
    connection = connections[using]
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        if connection.connection.prepare_threshold is None:
            # Django leaves it None, which makes psycopg ignore `prepare=True`; Django's own
            # cursors bind on the client and never prepare, so only these statements are.
            connection.connection.prepare_threshold = NEVER_BY_COUNT
        raw = PreparingCursor(connection.connection)
    cursor = connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)
    with cursor:
        yield cursor
