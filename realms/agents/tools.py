"""The pool tools of seed 001, for agents: list, health, spawn, scale, close, execute on a
named pool, execute where rentahal routes, and search past queries. The MCP server and the
agents' API both call these, so each operation has one implementation.

Every tool takes the authenticated `Caller` (agents.callers) and returns a structured
result: `{"ok": true, ...}`, or a refusal as data, `{"ok": false, "error": {"code",
"message", "fields"?, "retry_after"?}}`, never an exception for what the caller asked
wrong. Changing pools needs staff with the pools permissions. Queries an agent runs are
ordinary queries of the agent's own broker user (`agent_user`): queued, billed, recorded
and found by search like any other.
"""
from __future__ import annotations

import functools
import time
import uuid

from django.conf import settings

from accounts.actions import search
from accounts.actions.users import get_or_create_user
from accounts.models import Query
from pools import actions as pools
from pools import pool_routing
from pools.models import PoolAlias
from pools.status import describe_pool, describe_pools
from realms import lifecycle
from realms.frames import parse_submission
from rentahal.errors import BrokerError, Invalid, NotFound, TooManyQueries, error_body

# Agents' broker users are named from their staff login, so each login has one history.
AGENT_NAMESPACE = uuid.UUID("6f1c8f0e-7d0a-4a8e-9a62-5d1f3c2b9e10")
POLL_SECONDS = (0.05, 0.1, 0.2, 0.5)


class NoPool(BrokerError):
    """No pool of the type has a member that can serve; `routing` is the record that found so."""

    code = "no_pool"
    http_status = 503

    def __init__(self, routing: dict):
        super().__init__(routing["reason"])
        self.routing = routing


# Refusals that waiting may cure: they carry a `retry_after`.
PASSING_CODES = ("no_worker", "no_pool", "realm_full", "temporarily_unavailable")


def refusal(error: BrokerError) -> dict:
    """Return a refusal as data, with `retry_after` where waiting may help and the routing
    record of a route that found no pool."""
    body = error_body(error)
    if isinstance(error, TooManyQueries) or error.code in PASSING_CODES:
        # Every BrokerError has a `retry_after`, None where the refusal named no wait.
        if body.get("retry_after") is None:
            body["retry_after"] = error.retry_after if error.retry_after is not None else settings.RENTAHAL_BUSY_WAIT_SECONDS
    refused = {"ok": False, "error": body}
    if isinstance(error, NoPool):
        refused["routing"] = error.routing
    return refused


def tool(function):
    """Turn a tool's refusals (BrokerError) into data."""

    @functools.wraps(function)
    def run(*args, **kwargs) -> dict:
        try:
            return {"ok": True, **function(*args, **kwargs)}
        except BrokerError as exc:
            return refusal(exc)

    return run


def find_pool(name: str, realm: str = "") -> PoolAlias:
    pool = PoolAlias.objects.filter(name=name, realm=realm).first()
    if pool is None:
        where = f" in {realm}" if realm else ""
        raise NotFound(f"No pool {name}{where}.", code="unknown_pool")
    return pool


@tool
def pool_list(caller) -> dict:
    return {"pools": describe_pools()}


@tool
def pool_health(caller, *, pool: str = "", realm: str = "") -> dict:
    """Each pool's members with their health, and the pool's load (pools.pool_routing.candidate)."""
    described = [describe_pool(find_pool(pool, realm))] if pool else describe_pools()
    return {"pools": [{**pool_routing.candidate(entry), "strategy": entry["strategy"], "members": entry["members"]} for entry in described]}


@tool
def pool_spawn(caller, *, name: str, query_type: str, members: list[str], strategy: str = "auto", realm: str = "") -> dict:
    caller.require_pool_rights()
    created = pools.create_pool(name, query_type=query_type, members=members, strategy=strategy, realm=realm, acting_user=caller.user)
    return {"pool": describe_pool(created)}


@tool
def pool_scale(caller, *, name: str, realm: str = "", add: list[str] = (), remove: list[str] = ()) -> dict:
    caller.require_pool_rights()
    if not add and not remove:
        raise Invalid(fields={"add": ["Name members to add or remove."]})
    pool = find_pool(name, realm)
    current = list(pool.memberships.values_list("worker__name", flat=True))
    absent = [member for member in remove if member not in current]
    if absent:
        raise Invalid(fields={"remove": [f"Not members of {name}: {', '.join(absent)}."]})
    members = [member for member in current if member not in remove] + [member for member in add if member not in current]
    return {"pool": describe_pool(pools.save_pool(pool, members=members, acting_user=caller.user))}


@tool
def pool_close(caller, *, name: str, realm: str = "") -> dict:
    caller.require_pool_rights()
    pools.delete_pool(find_pool(name, realm), acting_user=caller.user)
    return {"closed": {"name": name, "realm": realm}}


def agent_user(caller) -> str:
    """Return the guid of the broker user an agent's queries belong to (made on first use)."""
    guid = caller.guid or str(uuid.uuid5(AGENT_NAMESPACE, f"staff:{caller.user.get_username()}"))
    get_or_create_user(guid)
    return guid


def run_query(caller, *, prompt: str, query_type: str, pool: str) -> dict:
    """Submit the query to `pool` as the agent's user and wait for its end (Postgres is the record)."""
    submission = parse_submission({"prompt": prompt, "query_type": query_type, "model_name": pool})
    guid = agent_user(caller)
    query_id = lifecycle.accept_query(guid, submission)["query_id"]
    deadline = time.monotonic() + settings.RENTAHAL_JOB_TIMEOUT
    polls = 0
    while True:
        query = Query.objects.get(pk=query_id)
        if query.status in Query.FINISHED or time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS[min(polls, len(POLL_SECONDS) - 1)])
        polls += 1
    outcome = {"query_id": query_id, "status": query.status}
    if query.status == Query.Status.DONE:
        return {**outcome, **{key: value for key, value in lifecycle.result_frame(query).items() if key not in ("type", "query_id")}}
    if query.status == Query.Status.FAILED:
        raise BrokerError(f"Query {query_id} failed: {query.error}", code="query_failed")
    raise BrokerError(f"Query {query_id} is still {query.status}; read it later by its id.", code="still_running")


@tool
def pool_execute(caller, *, pool: str, prompt: str, realm: str = "") -> dict:
    target = find_pool(pool, realm)
    answer = run_query(caller, prompt=prompt, query_type=target.query_type, pool=target.name)
    routing = {"selector": "named", "chosen": target.name, "realm": target.realm, "reason": "the caller named this pool"}
    return {**answer, "routing": routing}


@tool
def pool_route_execute(
    caller, *, prompt: str, selector: str = "least_loaded", query_type: str = "chat", affinity_key: str = "", pools: list[str] = ()
) -> dict:
    if selector not in pool_routing.SELECTORS:
        raise Invalid(fields={"selector": [f"One of {', '.join(pool_routing.SELECTORS)}."]})
    if selector == "affinity" and not affinity_key:
        raise Invalid(fields={"affinity_key": ["The affinity selector needs a conversation key."]})
    candidates = [pool for pool in describe_pools() if pool["query_type"] == query_type and (not pools or pool["name"] in pools)]
    routing = pool_routing.route(candidates, selector=selector, query_type=query_type, affinity_key=affinity_key)
    if routing["chosen"] is None:
        raise NoPool(routing)
    answer = run_query(caller, prompt=prompt, query_type=query_type, pool=routing["chosen"])
    return {**answer, "routing": routing}


@tool
def pool_search_memory(caller, *, query: str, page: int = 1, per_page: int = 20, user: str = "") -> dict:
    """Search past queries: staff across users (or one), anyone else only their own."""
    return search.search_queries(query, user=caller.search_scope(user or None), page=page, per_page=per_page)
