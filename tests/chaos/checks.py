"""What must hold after a chaos run, checked in SQL on every shard and against what each
user's client logged. Each broken promise is one violation line."""
import collections
import statistics
import uuid
from decimal import Decimal

from django.db import connections

from accounts.billing import system_totals
from accounts.models import Charge, Query, User
from rentahal.shard_placement import verify
from rentahal.sharding import shard_aliases
from tests.chaos.clients import User as ChaosUser
from tests.chaos.faults import Fault

# README, "Lost work is re-run": a fault is recovered from in under 30 s. A query must end
# within this many seconds of its acceptance or of the end of the last outage that began
# before that deadline, whichever is later.
WAIT_BOUND_SECONDS = 30.0
# Faults that are not outages: the flood must be absorbed by fair share within the bound.
NOT_OUTAGES = {"flood"}


def read_rows() -> tuple[dict, list, dict, list[str]]:
    """Return the queries (by id), charges and users of every shard, and any row found twice."""
    connections.close_all()
    queries, charges, users, twice = {}, [], {}, []
    for alias in shard_aliases():
        for query in Query.objects.using(alias).all():
            if query.pk in queries:
                twice.append(f"query {query.pk} is on two shards")
            queries[query.pk] = query
        charges.extend(Charge.objects.using(alias).all())
        for user in User.objects.using(alias).all():
            if user.pk in users:
                twice.append(f"user {user.pk} is on two shards")
            users[user.pk] = user
    return queries, charges, users, twice


def check_placement() -> list[str]:
    """Every row is on the shard the map names, and no move was left half-way (verify_shards)."""
    report = verify()
    return [*report.problems, *report.moves]


def check_ledger(queries: dict, charges: list, users: dict) -> list[str]:
    """Every acked query is terminal with a reason; one charge per done query, none on
    failed ones; ledger = sum of costs = users' totals = system totals."""
    violations = []
    by_query = collections.defaultdict(list)
    for charge in charges:
        by_query[charge.query_id].append(charge)
    for query in queries.values():
        found = by_query.get(query.pk, [])
        if query.status not in Query.FINISHED:
            violations.append(f"query {query.pk} of {query.user_id} ended the run {query.status}")
        elif query.status == Query.Status.FAILED:
            if not query.error:
                violations.append(f"query {query.pk} failed with no reason")
            if found:
                violations.append(f"failed query {query.pk} was charged {len(found)} time(s)")
        else:
            if len(found) != 1:
                violations.append(f"done query {query.pk} has {len(found)} charges")
            elif found[0].amount != query.cost:
                violations.append(f"done query {query.pk} cost {query.cost} but was charged {found[0].amount}")
    for query_id in set(by_query) - set(queries):
        violations.append(f"charge for query {query_id}, which is on no shard")
    done = [query for query in queries.values() if query.status == Query.Status.DONE]
    failed = [query for query in queries.values() if query.status == Query.Status.FAILED]
    ledger = sum((charge.amount for charge in charges), Decimal(0))
    costs = sum((query.cost for query in done), Decimal(0))
    user_costs = sum((user.total_cost for user in users.values()), Decimal(0))
    totals = system_totals()
    sums = {"ledger": ledger, "sum of done queries' cost": costs, "users' totals": user_costs, "system totals": totals["total_cost"]}
    if len(set(sums.values())) != 1:
        violations.append("money does not add up: " + ", ".join(f"{name} {value}" for name, value in sums.items()))
    if totals["total_queries"] != len(done) or totals["failed_queries"] != len(failed):
        violations.append(
            f"system totals count {totals['total_queries']} done and {totals['failed_queries']} failed; "
            f"the rows say {len(done)} and {len(failed)}"
        )
    done_by_user = collections.Counter(query.user_id for query in done)
    charged_by_user = collections.defaultdict(Decimal)
    for charge in charges:
        charged_by_user[charge.user_id] += charge.amount
    for user in users.values():
        if user.query_count != done_by_user[user.pk] or user.total_cost != charged_by_user[user.pk]:
            violations.append(
                f"user {user.pk} counts {user.query_count} queries costing {user.total_cost}; "
                f"the ledger says {done_by_user[user.pk]} costing {charged_by_user[user.pk]}"
            )
    return violations


def check_clients(chaos_users: list[ChaosUser], queries: dict) -> list[str]:
    """Every acked query is known by its user's client to have ended as it did in SQL, was
    pushed to it at most once, and no client saw a query of anyone else."""
    violations = []
    owner = {str(query.pk): query.user_id for query in queries.values()}
    keys = {(query.user_id, query.idempotency_key): str(query.pk) for query in queries.values()}
    claimed = set()
    for user in chaos_users:
        for query_id, pushes in user.pushes.items():
            if owner.get(query_id) != user.guid:
                violations.append(f"user {user.index} was pushed query {query_id}, which is {owner.get(query_id)}'s")
            elif len(pushes) > 1:
                violations.append(f"user {user.index} was pushed {len(pushes)} outcomes of query {query_id}")
        for frame in (entry["frame"] for entry in user.log if entry["dir"] == "in"):
            query_id = frame.get("query_id")
            if query_id and owner.get(query_id) != user.guid:
                violations.append(f"user {user.index} saw a {frame['type']} of query {query_id}, not its own")
        for tracked in user.tracked.values():
            key = tracked.planned.key
            if tracked.other_ids:
                violations.append(f"user {user.index}'s key {key} named queries {tracked.query_id} and {tracked.other_ids}")
            stored_id = keys.get((user.guid, key))
            if tracked.query_id is None:
                if stored_id is not None:
                    violations.append(f"user {user.index}'s key {key} made query {stored_id}, but no answer ever named it")
                continue
            claimed.add(tracked.query_id)
            query = queries.get(uuid_of(tracked.query_id))
            if query is None or query.user_id != user.guid:
                violations.append(f"user {user.index} was acked query {tracked.query_id}, which is not its own in SQL")
                continue
            if tracked.outcome is None:
                violations.append(f"user {user.index} never learned how query {query.pk} ended ({query.status})")
            elif not outcome_matches(tracked.outcome, query):
                violations.append(
                    f"user {user.index} learned {describe(tracked.outcome)} for query {query.pk}, which ended {query.status}"
                )
    for query_id in set(owner) - claimed:
        violations.append(f"query {query_id} of {owner[query_id]} was never acked to its user")
    return violations


def uuid_of(query_id: str) -> uuid.UUID:
    return uuid.UUID(query_id)


def outcome_matches(frame: dict, query: Query) -> bool:
    if frame["type"] == "query_result":
        return query.status == Query.Status.DONE and frame.get("result") == query.result
    return query.status == Query.Status.FAILED and frame.get("code") == "query_failed"


def describe(frame: dict) -> str:
    if frame["type"] == "query_result":
        return f"a result ({frame.get('result', '')[:40]!r})"
    return f"an error ({frame.get('code')}: {frame.get('message', '')[:60]})"


def check_sockets(chaos_users: list[ChaosUser]) -> list[str]:
    """No socket is dropped for an internal error (1011) and no handshake fails with HTTP 500
    (docs/protocol.md §1: an outage is answered with an error frame)."""
    violations = []
    for user in chaos_users:
        for close in user.closes:
            if close.get("code") == 1011 or (close.get("status") or 0) >= 500:
                violations.append(f"user {user.index}'s socket {close['socket']} ended with {close.get('code') or close.get('error')}")
    return violations


def waits(queries: dict, faults: list[Fault]) -> tuple[list[float], list[str]]:
    """Return every finished query's wait (accepted to finished, seconds) and the ones past
    the bound: finished within WAIT_BOUND_SECONDS of its acceptance, a deadline that an
    outage beginning before it pushes to WAIT_BOUND_SECONDS after that outage's end (an
    outage that begins once the deadline has passed excuses nothing)."""
    outages = sorted(
        (fault for fault in faults if fault.kind not in NOT_OUTAGES and fault.start is not None), key=lambda fault: fault.start
    )
    seconds, violations = [], []
    for query in queries.values():
        if query.finished_at is None:
            continue
        accepted, finished = query.accepted_at.timestamp(), query.finished_at.timestamp()
        seconds.append(finished - accepted)
        deadline = accepted + WAIT_BOUND_SECONDS
        for fault in outages:
            if fault.start < deadline:
                deadline = max(deadline, fault.end + WAIT_BOUND_SECONDS)
        if finished > deadline:
            violations.append(
                f"query {query.pk} finished {finished - deadline:.1f} s past its bound "
                f"(waited {finished - accepted:.1f} s from its acceptance)"
            )
    return seconds, violations


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda share: ordered[min(len(ordered) - 1, int(share * len(ordered)))]  # noqa: E731
    return {"p50": round(statistics.median(ordered), 3), "p95": round(pick(0.95), 3), "max": round(ordered[-1], 3)}
