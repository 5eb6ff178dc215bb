"""Whose query a model call serves, for clients that need more than the request: a call to a
peer broker names the query and a pseudonym of its user, and counts the brokers it crossed.

The realm worker sets it around a query's serve (`realms.lifecycle.serve_query`), the
federation app around a query a peer sent (`federation.serving`); a contextvar follows the
call into `pools.dispatch` and its client without pools knowing who set it.
"""
import contextlib
import contextvars
import dataclasses


@dataclasses.dataclass(frozen=True)
class QueryContext:
    query_id: str
    user: str  # a guid on the user's own broker, a pseudonym on a peer's
    hops: int = 0  # brokers the query crossed to get here
    via: tuple[str, ...] = ()  # federation ids of the brokers it came through, first first


_current: contextvars.ContextVar[QueryContext | None] = contextvars.ContextVar("rentahal_query", default=None)


def current_query() -> QueryContext | None:
    return _current.get()


@contextlib.contextmanager
def serving_query(context: QueryContext):
    """Name the query every model call inside the block serves."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
