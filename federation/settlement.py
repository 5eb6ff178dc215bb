"""Settlement between two brokers: each side's totals for a period, and reconciliation of
our rows against the peer's own, fetched over a signed call.

Our rows with a peer are its account on `default` (`Settlement`) and what our users asked
of it, on every shard (`SentSettlement`); `rows_with` gathers them."""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import urllib.parse

from asgiref.sync import async_to_sync
from federation.client import call_peer
from federation.models import Peer, SentSettlement, Settlement
from rentahal.sharding import shard_aliases

# Service seconds are measured on the serving side and copied; this much rounding is no mismatch.
SECONDS_TOLERANCE = 0.001


def rows_with(peer: Peer, since: datetime.datetime | None = None) -> list[Settlement | SentSettlement]:
    """Return our settlement rows with the peer, both directions, oldest first."""
    rows = [*Settlement.objects.filter(peer=peer)]
    for alias in shard_aliases():
        rows += SentSettlement.objects.using(alias).filter(peer=peer.federation_id)
    if since is not None:
        rows = [row for row in rows if row.created_at >= since]
    return sorted(rows, key=lambda row: row.created_at)


def totals(peer: Peer, since: datetime.datetime | None = None) -> dict[str, dict]:
    """Return {direction: {queries, done, seconds, amount}} of our rows with the peer."""
    found = {direction: {"queries": 0, "done": 0, "seconds": 0.0, "amount": decimal.Decimal(0)} for direction in Settlement.Direction.values}
    for row in rows_with(peer, since):
        entry = found[row.direction]
        entry["queries"] += 1
        entry["seconds"] += row.service_seconds
        entry["amount"] += row.amount
        if row.status == Settlement.Status.DONE:
            entry["done"] += 1
    return found


@dataclasses.dataclass(frozen=True)
class Mismatch:
    query_id: str
    what: str
    ours: str
    theirs: str


# What we sent, the peer served, and the other way round.
MIRROR = {Settlement.Direction.SENT: Settlement.Direction.SERVED, Settlement.Direction.SERVED: Settlement.Direction.SENT}


def reconcile(peer: Peer, since: datetime.datetime | None = None) -> list[Mismatch]:
    """Compare our rows with the peer's (its `settlement` endpoint, signed) and return every
    mismatch: a query only one side recorded, or recorded with another status, time or amount."""
    path = "/api/federation/settlement" + (f"?{urllib.parse.urlencode({'since': since.isoformat()})}" if since else "")
    answer = async_to_sync(call_peer)(peer.base_url, "GET", path)
    theirs = {(MIRROR.get(row.get("direction")), row.get("query_id")): row for row in answer.get("rows", []) if isinstance(row, dict)}
    mismatches = []
    for row in rows_with(peer, since):
        other = theirs.pop((row.direction, row.query_id), None)
        if other is None:
            mismatches.append(Mismatch(row.query_id, f"{row.direction} only here", row.status, "-"))
            continue
        if other.get("status") != row.status:
            mismatches.append(Mismatch(row.query_id, "status", row.status, str(other.get("status"))))
        if abs(float(other.get("service_seconds") or 0) - row.service_seconds) > SECONDS_TOLERANCE:
            mismatches.append(Mismatch(row.query_id, "service seconds", f"{row.service_seconds:g}", str(other.get("service_seconds"))))
        if decimal.Decimal(str(other.get("amount") or 0)) != row.amount:
            mismatches.append(Mismatch(row.query_id, "amount", str(row.amount), str(other.get("amount"))))
    for (direction, query_id), other in theirs.items():
        mismatches.append(Mismatch(str(query_id), f"{direction} only at {peer.federation_id}", "-", str(other.get("status"))))
    return mismatches
