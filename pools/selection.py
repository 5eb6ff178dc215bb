"""The one place a worker is picked for a query."""
from pools.models import Worker


class NoWorkerAvailable(Exception):
    """No worker can serve this query now; the message says why, for the user."""


def select_worker(query_type: str) -> Worker:
    """Return the healthiest non-blacklisted worker of the query's type (PROTOCOL.md section 3)."""
    worker = (
        Worker.objects.filter(query_type=query_type, is_blacklisted=False)
        .order_by("-health_score", "name")
        .first()
    )
    if worker is None:
        raise NoWorkerAvailable(f"No {query_type} worker is available.")
    return worker
