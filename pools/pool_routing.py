"""Which pool an agent's task goes to when the agent lets rentahal choose (the MCP tool
`pool_route_execute`): a selector over the pools that could serve it, with a record of
each candidate and the reason for the choice. Worker choice inside the pool stays with
`pools.selection.select_worker`."""
from __future__ import annotations

import hashlib
import random

from django.conf import settings

from pools import state

SELECTORS = ("round_robin", "least_loaded", "random", "affinity")
ROUND_ROBIN_KEY = "rentahal:pool-route:rr:{query_type}"


def capacity_of(member: dict) -> int:
    return member["max_concurrency"] or settings.RENTAHAL_DEFAULT_WORKER_CONCURRENCY


def candidate(pool: dict) -> dict:
    """Return what the record shows of a pool: its members able to serve, in-flight work and capacity."""
    serving = [member for member in pool["members"] if not member["is_blacklisted"]]
    in_flight = sum(member["in_flight"] for member in serving)
    capacity = sum(capacity_of(member) for member in serving)
    return {
        "pool": pool["name"],
        "realm": pool["realm"],
        "serving_members": len(serving),
        "in_flight": in_flight,
        "capacity": capacity,
        "load": round(in_flight / capacity, 4) if capacity else None,
    }


def route(pools: list[dict], *, selector: str, query_type: str, affinity_key: str = "") -> dict:
    """Return the routing record: `chosen` (a pool name, or None when no pool can serve),
    the `candidates` and the `reason`. `pools` are described pools (pools.status)."""
    candidates = [candidate(pool) for pool in sorted(pools, key=lambda pool: (pool["name"], pool["realm"]))]
    serving = [entry for entry in candidates if entry["serving_members"]]
    record = {"selector": selector, "candidates": candidates, "chosen": None}
    if not serving:
        return {**record, "reason": f"no {query_type} pool has a member that is not blacklisted"}
    if selector == "round_robin":
        ticket = state.client().incr(ROUND_ROBIN_KEY.format(query_type=query_type)) - 1
        chosen = serving[ticket % len(serving)]
        reason = f"ticket {ticket} of the {query_type} rotation over {len(serving)} serving pools"
    elif selector == "least_loaded":
        chosen = min(serving, key=lambda entry: (entry["load"], entry["pool"]))
        reason = f"lowest in-flight work relative to capacity ({chosen['in_flight']}/{chosen['capacity']})"
    elif selector == "random":
        chosen = random.choice(serving)
        reason = f"drawn at random from {len(serving)} serving pools"
    else:
        # Rendezvous hashing: a key keeps its pool while that pool serves, and a pool that
        # comes or goes moves only the keys it wins or held.
        chosen = max(serving, key=lambda entry: hashlib.sha256(f"{entry['pool']}:{affinity_key}".encode()).digest())
        reason = f"conversation key {affinity_key!r} hashes to this pool among {len(serving)} serving pools"
    return {**record, "chosen": chosen["pool"], "realm": chosen["realm"], "reason": reason}
