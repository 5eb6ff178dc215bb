"""A/B comparison of two pool aliases from recorded attempts (SelectionOutcome): latency
distribution, error rate and recovery time, for choosing between two pool configurations."""
from __future__ import annotations

import datetime
import math
import statistics

from django.utils import timezone

from pools.models import SelectionOutcome
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
    }


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
