"""The Redis of REDIS_URL: this process's clients of it, and RQ's queues on it (one per realm)."""
import functools

import redis
from django.conf import settings
from rq import Queue


@functools.lru_cache(maxsize=8)
def client_for_url(url: str, *, decode_responses: bool = False) -> redis.Redis:
    """Return this process's client of `url`.

    A client owns a thread-safe connection pool, so every caller of the process shares kept-alive
    connections instead of paying a connect and a SELECT per call (as a client per call would).
    """
    return redis.Redis.from_url(url, decode_responses=decode_responses)


def redis_connection() -> redis.Redis:
    return client_for_url(settings.REDIS_URL)


@functools.cache
def get_queue(name: str) -> Queue:
    """Return the RQ queue of this name; realms are data, so their queues are not in settings."""
    return Queue(name, connection=redis_connection())


class JobDeferred(Exception):
    """Raised by a job that is not failing but must run again later: its failure callback
    puts it back on its queue through RQ's retry (realms.lifecycle.WaitingForWorker). The
    realm workers log it as that, not as a crash (rentahal.worker.QuietDeferrals)."""
