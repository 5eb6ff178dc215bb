"""Settlement between two brokers: each side's totals for a period, and reconciliation of
our rows against the peer's own, fetched over a signed call."""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import urllib.parse

from asgiref.sync import async_to_sync
from django.db.models import Count, Sum

from federation.client import call_peer
from federation.models import Peer, Settlement

# Service seconds are measured on the serving side and copied; this much rounding is no mismatch.
SECONDS_TOLERANCE = 0.001


def totals(peer: Peer, since: datetime.datetime | None = None) -> dict[str, dict]:
    """Return {direction: {queries, done, seconds, amount}} of our rows with the peer."""
    rows = Settlement.objects.filter(peer=peer)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    found = {direction: {"queries": 0, "done": 0, "seconds": 0.0, "amount": decimal.Decimal(0)} for direction in Settlement.Direction.values}
    for row in rows.values("direction", "status").annotate(queries=Count("id"), seconds=Sum("service_seconds"), amount=Sum("amount")):
        entry = found[row["direction"]]
        entry["queries"] += row["queries"]
        entry["seconds"] += row["seconds"] or 0.0
        entry["amount"] += row["amount"] or 0
        if row["status"] == Settlement.Status.DONE:
            entry["done"] += row["queries"]
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
    ours_rows = Settlement.objects.filter(peer=peer)
    if since is not None:
        ours_rows = ours_rows.filter(created_at__gte=since)
    mismatches = []
    for row in ours_rows.order_by("created_at"):
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
