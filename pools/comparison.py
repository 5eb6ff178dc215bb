"""A/B comparison of two pool aliases from recorded attempts (SelectionOutcome): latency
distribution, error rate and recovery time, for choosing between two pool configurations;
and over time, each alias's members' health (HealthSample, one per health round) and its
attempts and errors per minute, which the admin draws as charts."""
from __future__ import annotations

import datetime
import math
import statistics

from django.db.models import Count, Q
from django.db.models.functions import TruncMinute
from django.utils import timezone

from pools.models import HealthSample, PoolMember, SelectionOutcome
from rentahal.errors import Invalid
from rentahal.metrics import percentile

# A century: any longer window reaches back before every recorded attempt, and a window
# past datetime's range would overflow.
MAX_WINDOW_HOURS = 24 * 366 * 100


def recovery_times(rows: list[tuple[str, str, datetime.datetime]]) -> list[float]:
    """Return, per member, the seconds from the first failure of a failing spell to its next success."""
    spells: dict[str, datetime.datetime] = {}
    times = []
    for worker, result, created_at in rows:
        if result == SelectionOutcome.Result.OK:
            started = spells.pop(worker, None)
            if started is not None:
                times.append((created_at - started).total_seconds())
        elif result != SelectionOutcome.Result.CLIENT:
            spells.setdefault(worker, created_at)
    return times


def summarize_pool(name: str, *, realm: str | None = None, since: datetime.datetime | None = None) -> dict:
    """Return one alias's figures over its recorded attempts."""
    rows = SelectionOutcome.objects.filter(pool=name)
    if realm is not None:
        rows = rows.filter(pool_realm=realm)
    if since is not None:
        rows = rows.filter(created_at__gte=since)
    attempts = list(rows.order_by("created_at", "id").values_list("worker", "result", "created_at", "duration", "strategy"))
    latencies = sorted(duration for _, result, _, duration, _ in attempts if result == SelectionOutcome.Result.OK)
    failures = sum(1 for _, result, _, _, _ in attempts if result not in (SelectionOutcome.Result.OK, SelectionOutcome.Result.CLIENT))
    recoveries = recovery_times([(worker, result, created_at) for worker, result, created_at, _, _ in attempts])
    return {
        "pool": name,
        "strategies": sorted({strategy for *_, strategy in attempts}),
        "attempts": len(attempts),
        "answered": len(latencies),
        "error_rate": failures / len(attempts) if attempts else None,
        "latency_p50": percentile(latencies, 0.50),
        "latency_p90": percentile(latencies, 0.90),
        "latency_p99": percentile(latencies, 0.99),
        "latency_mean": statistics.fmean(latencies) if latencies else None,
        "recoveries": len(recoveries),
        "recovery_mean": statistics.fmean(recoveries) if recoveries else None,
        "recovery_max": max(recoveries) if recoveries else None,
        "members": member_counts(attempts),
        "health_over_time": health_over_time(name, realm=realm, since=since),
        "errors_over_time": errors_over_time(rows),
    }


def health_over_time(name: str, *, realm: str | None = None, since: datetime.datetime | None = None) -> list[dict]:
    """Return, per health round, the mean score and latency of the alias's current members and how many were serving."""
    seats = PoolMember.objects.filter(pool__name=name)
    if realm is not None:
        seats = seats.filter(pool__realm=realm)
    samples = HealthSample.objects.filter(worker__in=seats.values("worker__name"))
    if since is not None:
        samples = samples.filter(created_at__gte=since)
    rounds: dict[datetime.datetime, list[tuple[float, float | None, str]]] = {}
    for at, score, latency, state in samples.order_by("created_at").values_list("created_at", "score", "latency", "state"):
        rounds.setdefault(at, []).append((score, latency, state))
    series = []
    for at, members in rounds.items():
        latencies = [latency for _, latency, _ in members if latency is not None]
        series.append({
            "at": at.isoformat(),
            "score": statistics.fmean(score for score, _, _ in members),
            "latency": statistics.fmean(latencies) if latencies else None,
            "serving": sum(1 for *_, state in members if state == HealthSample.State.SERVING),
            "members": len(members),
        })
    return series


def errors_over_time(rows) -> list[dict]:
    """Return the alias's attempts and failed attempts (a client's bad request is not a failure) per minute."""
    failed = ~Q(result__in=[SelectionOutcome.Result.OK, SelectionOutcome.Result.CLIENT])
    minutes = (
        rows.annotate(minute=TruncMinute("created_at")).values("minute")
        .annotate(attempts=Count("id"), errors=Count("id", filter=failed)).order_by("minute")
    )
    return [{"at": row["minute"].isoformat(), "attempts": row["attempts"], "errors": row["errors"]} for row in minutes]


def member_counts(attempts) -> dict[str, int]:
    counts: dict[str, int] = {}
    for worker, *_ in attempts:
        counts[worker] = counts.get(worker, 0) + 1
    return dict(sorted(counts.items()))


def compare_pools(a: str, b: str, *, realm: str | None = None, hours: float | None = None) -> dict:
    """Return both aliases' figures side by side, over the last `hours` when given."""
    since = window_start(hours) if hours is not None else None
    return {"a": summarize_pool(a, realm=realm, since=since), "b": summarize_pool(b, realm=realm, since=since)}


def window_start(hours: float) -> datetime.datetime:
    """Return the start of a window of the last `hours`, refusing a window that is not a
    positive, finite number of hours (nan, inf, negative) before it reaches datetime."""
    if not (math.isfinite(hours) and 0 < hours <= MAX_WINDOW_HOURS):
        raise Invalid(fields={"hours": [f"hours must be a number above 0 and at most {MAX_WINDOW_HOURS}."]})
    return timezone.now() - datetime.timedelta(hours=hours)
