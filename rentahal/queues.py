"""RQ wiring: one queue per realm, all on the Redis of REDIS_URL."""
import functools

import django_rq
from rq import Queue


@functools.cache
def get_queue(name: str) -> Queue:
    """Return the RQ queue of this name; realms are data, so their queues are not in settings."""
    return Queue(name, connection=django_rq.get_connection("default"))
