"""What a sysop's panel reads: who is online (`active_users`), every user's totals
(`user_stats`), the system's totals (`system_stats`) and the workers' live health
(`worker_health`), docs/protocol.md §1.

Who is online is a count of open sockets per user in one Redis hash, raised when a socket
is greeted and lowered when it closes; a web process killed without closing its sockets
leaves its users counted until they connect and leave again.
"""
import logging

import redis

from accounts.actions.users import find_user, list_users
from accounts.billing import system_totals
from pools import actions as pools
from pools.status import describe_workers
from rentahal.errors import NotFound
from rentahal.queues import redis_connection

logger = logging.getLogger(__name__)

PRESENCE_KEY = "rentahal:presence"
# The panel lists at most this many users (newest first) and online users.
USERS_SHOWN = 200


def record_presence(guid: str, delta: int) -> None:
    """Count one more (or one fewer) open socket of the user; an outage is logged, never raised."""
    try:
        redis_connection().hincrby(PRESENCE_KEY, guid, delta)
    except redis.RedisError as exc:
        logger.warning("presence of %s not recorded: %s", guid, exc)


def online_guids() -> list[str]:
    counts = redis_connection().hgetall(PRESENCE_KEY)
    return [guid.decode() for guid, count in counts.items() if int(count) > 0][:USERS_SHOWN]


def user_row(user, online: set[str]) -> dict:
    return {**user.as_frame_data(), "online": user.guid in online, "created_at": user.created_at.isoformat()}


def active_users() -> list[dict]:
    """Return the users with an open socket now, as the `active_users` frame lists them."""
    online = online_guids()
    rows = []
    for guid in online:
        try:
            rows.append(user_row(find_user(guid), set(online)))
        except NotFound:
            continue
    return rows


def user_stats() -> list[dict]:
    """Return the newest users with their totals, ban and online state (`user_stats`)."""
    online = set(online_guids())
    return [user_row(user, online) for user in list_users(limit=USERS_SHOWN)]


def system_stats() -> dict:
    """Return the `system_stats` of a sysop's `get_stats`: totals, online users and the workers with their addresses."""
    totals = system_totals()
    return {
        "total_queries": totals["total_queries"],
        "failed_queries": totals["failed_queries"],
        "total_processing_time": totals["total_processing_time"],
        "total_cost": float(totals["total_cost"]),
        "online_users": len(online_guids()),
        "workers": pools.list_workers(with_addresses=True),
    }


def sysop_frames() -> list[dict]:
    """Return the frames that answer a sysop's `get_stats`, in the order they are sent."""
    return [
        {"type": "system_stats", "data": system_stats()},
        {"type": "worker_health", "data": describe_workers()},
        {"type": "active_users", "users": active_users()},
        {"type": "user_stats", "data": user_stats()},
    ]
