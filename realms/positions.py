"""Queue positions that move: while a query waits in its realm's queue, its user's sockets are
sent a `queue_update` (docs/protocol.md §1) whenever its place changes.

Each realm worker announces the realms it serves once a second (`announce_every_second`),
and a lock in Redis lets one process a second do it for a realm, however many serve it. The
places last announced are kept in Redis, so only a query whose place changed is told: a
queue that does not move costs two Redis commands a second and no push. A query newly in
the queue is recorded without a push, since its acceptance frame just gave its place.
"""
import asyncio
import logging
import threading

from asgiref.sync import async_to_sync
from django.db import close_old_connections
from rq.job import Job

from pools.health import serving_workers
from realms.lifecycle import queue_update
from realms.models import Realm
from realms.registry import registry_cache
from rentahal.errors import STORE_OUTAGES
from rentahal.pushes import push_frame
from rentahal.queues import get_queue

logger = logging.getLogger(__name__)

ANNOUNCE_EVERY_SECONDS = 1.0
# The places announced are forgotten if no one announces the realm for this long (its
# workers stopped); the next announcer then records them again without a push.
PLACES_TTL_SECONDS = 600


def places_key(realm: Realm) -> str:
    return f"realms:places:{realm.name}"


def lock_key(realm: Realm) -> str:
    return f"realms:places:{realm.name}:lock"


def announce_positions(realm: Realm) -> int:
    """Push `queue_update` to the users of the realm's waiting queries whose place in its
    queue changed since the last announcement; return how many were pushed.

    Does nothing when another process announced the realm within the last second. Only the
    first `queue_limit` places are announced: a queue is that long at most, but for the
    overshoot of a burst (realms.routing.route_query).
    """
    queue = get_queue(realm.queue_name)
    redis = queue.connection
    if not redis.set(lock_key(realm), 1, nx=True, px=int(ANNOUNCE_EVERY_SECONDS * 1000 * 0.9)):
        return 0
    with redis.pipeline(transaction=False) as pipeline:
        pipeline.lrange(queue.key, 0, realm.queue_limit - 1)
        pipeline.hgetall(places_key(realm))
        waiting, before = pipeline.execute()
    places = {job_id.decode(): place for place, job_id in enumerate(waiting, start=1)}
    moved = {
        job_id: place for job_id, place in places.items()
        if job_id.encode() in before and int(before[job_id.encode()]) != place
    }
    with redis.pipeline(transaction=True) as pipeline:
        pipeline.delete(places_key(realm))
        if places:
            pipeline.hset(places_key(realm), mapping=places)
            pipeline.expire(places_key(realm), PLACES_TTL_SECONDS)
        pipeline.execute()
    if not moved:
        return 0
    total = len(serving_workers(realm.name, realm.query_type))
    frames = []
    for job in Job.fetch_many(list(moved), connection=redis):
        # A job enqueued before jobs named their user, or gone since the queue was read.
        user = job.meta.get("user") if job is not None else None
        if user:
            frames.append((user, queue_update(job.id, realm.name, depth=moved[job.id], total=total)))
    async_to_sync(push_frames)(frames)
    return len(frames)


async def push_frames(frames: list[tuple[str, dict]]) -> None:
    await asyncio.gather(*(push_frame(user, frame) for user, frame in frames))


def announce_every_second(names: list[str], *, stopping: threading.Event) -> None:
    """Announce the named realms' queue positions every second until `stopping` is set.

    Each round reads the realms as they are now (a changed queue limit, a deleted realm). A
    round that meets a store outage, or fails otherwise, is logged and the next goes on:
    positions are a courtesy, and the realm worker beside this loop must not be disturbed.
    """
    while not stopping.wait(ANNOUNCE_EVERY_SECONDS):
        close_old_connections()
        for name in names:
            try:
                realm = registry_cache.current().named(name)
                if realm is not None:
                    announce_positions(realm)
            except STORE_OUTAGES as exc:
                logger.warning("queue positions of %s not announced: a store is unavailable (%s)", name, exc)
            except Exception:
                logger.exception("queue positions of %s not announced", name)


def start_announcing(names: list[str]) -> threading.Event:
    """Start announcing the named realms' queue positions on a daemon thread; set the
    returned event to stop it."""
    stopping = threading.Event()
    threading.Thread(
        target=announce_every_second, args=(names,), kwargs={"stopping": stopping},
        name="queue-positions", daemon=True,
    ).start()
    return stopping
