"""RQ wiring: one queue per realm, all on the Redis of REDIS_URL."""
import functools

import django_rq
import redis
from rq import Queue


@functools.cache
def redis_connection() -> redis.Redis:
    """Return this process's client for REDIS_URL; its connection pool is shared by threads.

    (`django_rq.get_connection` builds a new client, and so a new connection, per call.)
    """
    return django_rq.get_connection("default")


@functools.cache
def get_queue(name: str) -> Queue:
    """Return the RQ queue of this name; realms are data, so their queues are not in settings."""
    return Queue(name, connection=redis_connection())
