"""Per-realm metrics: a recent window of outcomes in Redis that every process agrees on, and
Prometheus counters (multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set) served at /metrics.

The Redis window gives percentiles over recent queries, not an average of everything ever;
the Prometheus histogram gives scrapers the same through `histogram_quantile`.
"""
import collections
import dataclasses
import functools
import logging
import math
import os
import time
import uuid

import redis
from django.conf import settings
from django.http import HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from rest_framework.views import APIView

from rentahal.metrics_access import AnyAccept, IsMetricsScraper, MetricsTokenAuthentication
from rentahal.queues import client_for_url, redis_connection

logger = logging.getLogger(__name__)

KEY_PREFIX = "rentahal:metrics:"
PERCENTILES = (50, 95, 99)

QUERIES = Counter("rentahal_queries", "Queries finished (answered or failed), by realm.", ["realm"])
ERRORS = Counter("rentahal_query_errors", "Queries that failed, by realm.", ["realm"])
CROSS_REALM = Counter(
    "rentahal_cross_realm_requests", "Queries of a realm served by a worker of another realm.", ["realm"]
)
PROCESSING = Histogram(
    "rentahal_query_processing_seconds",
    "Seconds from acceptance to answer of answered queries.",
    ["realm"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, math.inf),
)
WORKER_QUERIES = Counter("rentahal_worker_queries", "Queries sent to each worker.", ["realm", "worker"])
WORKER_BUSY = Counter(
    "rentahal_worker_busy_seconds", "Seconds each worker spent answering; its rate is utilisation.", ["realm", "worker"]
)

# Keeps the connection count and its peak consistent under concurrent connects.
CONNECTION_SCRIPT = """
local current = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if current < 0 then
  redis.call('HSET', KEYS[1], ARGV[1], 0)
  current = 0
end
local peak = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current > peak then
  redis.call('HSET', KEYS[2], ARGV[1], current)
end
return current
"""

extra_collectors = []


@functools.lru_cache(maxsize=4)
def connection_script_for(url: str):
    """Return the connection-count script registered on the client of `url` (sent once, then by SHA)."""
    return client_for_url(url).register_script(CONNECTION_SCRIPT)


def totals_key(realm: str) -> str:
    return f"{KEY_PREFIX}totals:{realm}"


def window_key(realm: str) -> str:
    return f"{KEY_PREFIX}window:{realm}"


def worker_totals_key(realm: str) -> str:
    return f"{KEY_PREFIX}workers:{realm}"


CONNECTIONS_KEY = KEY_PREFIX + "connections"
PEAK_CONNECTIONS_KEY = KEY_PREFIX + "peak_connections"


@dataclasses.dataclass(frozen=True)
class QueryOutcome:
    """One finished query of `realm`, as its metrics count it."""

    realm: str
    worker: str
    processing_time: float
    ok: bool
    cross_realm: bool = False
    busy_seconds: float = 0.0


def record_query_outcomes(outcomes: list[QueryOutcome]) -> None:
    """Count finished queries in their realms' metrics; a metrics outage never fails a query.

    The Redis writes of all of them go out as one pipelined round trip on a kept-alive
    connection, in the caller's thread. The realm worker counts a batch of finished queries
    in the thread that stored them (`realms.lifecycle`), before any of their answers is
    pushed, so a query is counted before its user sees the answer and the worker's event
    loop never waits on Redis for it.
    """
    if not outcomes:
        return
    now = time.time()
    totals: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_worker: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    windows: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for outcome in outcomes:
        realm = outcome.realm
        QUERIES.labels(realm).inc()
        totals[realm]["processed"] += 1
        if outcome.ok:
            PROCESSING.labels(realm).observe(outcome.processing_time)
        else:
            ERRORS.labels(realm).inc()
            totals[realm]["errors"] += 1
        if outcome.cross_realm:
            CROSS_REALM.labels(realm).inc()
            totals[realm]["cross_realm"] += 1
        if outcome.worker:
            WORKER_QUERIES.labels(realm, outcome.worker).inc()
            WORKER_BUSY.labels(realm, outcome.worker).inc(outcome.busy_seconds)
            by_worker[realm][outcome.worker] += 1
        member = (
            f"{uuid.uuid4().hex}|{int(outcome.ok)}|{outcome.processing_time:.6f}|{outcome.busy_seconds:.6f}|{outcome.worker}"
        )
        windows[realm][member] = now
    try:
        pipe = redis_connection().pipeline(transaction=False)
        for realm, counts in totals.items():
            for field, count in counts.items():
                pipe.hincrby(totals_key(realm), field, count)
            for worker, count in by_worker[realm].items():
                pipe.hincrby(worker_totals_key(realm), worker, count)
            pipe.zadd(window_key(realm), windows[realm])
            pipe.zremrangebyscore(window_key(realm), "-inf", now - settings.RENTAHAL_METRICS_WINDOW)
            pipe.zremrangebyrank(window_key(realm), 0, -settings.RENTAHAL_METRICS_WINDOW_SIZE - 1)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning("metrics of %d queries (realms %s) not recorded: %s", len(outcomes), ", ".join(totals), exc)


def record_connection(realm: str, delta: int) -> int:
    """Add `delta` to the realm's live connections (raising its peak); return the new count."""
    try:
        script = connection_script_for(settings.REDIS_URL)
        return int(script(keys=[CONNECTIONS_KEY, PEAK_CONNECTIONS_KEY], args=[realm, delta]))
    except redis.RedisError as exc:
        logger.warning("connection count of realm %s not recorded: %s", realm, exc)
        return 0


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Return the nearest-rank percentile (`fraction` 0.95 for p95) of already sorted values,
    None when there are none. The one definition: realm metrics, pool comparisons and the
    benchmarks all report percentiles through it."""
    if not sorted_values:
        return None
    rank = min(len(sorted_values), max(1, math.ceil(fraction * len(sorted_values))))
    return sorted_values[rank - 1]


def read_window(realm: str, connection: redis.Redis) -> list[tuple[bool, float, float, str]]:
    cutoff = time.time() - settings.RENTAHAL_METRICS_WINDOW
    samples = []
    for raw in connection.zrangebyscore(window_key(realm), cutoff, "+inf"):
        _, ok, processing_time, busy, worker = raw.decode().split("|", 4)
        samples.append((ok == "1", float(processing_time), float(busy), worker))
    return samples


def summarise(samples: list[tuple[bool, float, float, str]], workers: int) -> dict:
    """Return counts, error rate, percentiles and utilisation of a window of samples."""
    window = settings.RENTAHAL_METRICS_WINDOW
    times = sorted(processing_time for ok, processing_time, _, _ in samples if ok)
    errors = sum(1 for ok, *_ in samples if not ok)
    busy_by_worker: dict[str, float] = {}
    for _, _, busy, worker in samples:
        if worker:
            busy_by_worker[worker] = busy_by_worker.get(worker, 0.0) + busy
    busy_total = sum(busy_by_worker.values())
    return {
        "window_seconds": window,
        "window_queries": len(samples),
        "window_errors": errors,
        "error_rate": errors / len(samples) if samples else 0.0,
        "processing_time": {f"p{pct}": percentile(times, pct / 100) for pct in PERCENTILES},
        "utilisation": busy_total / (window * workers) if workers else (1.0 if busy_total else 0.0),
        "worker_utilisation": {worker: busy / window for worker, busy in sorted(busy_by_worker.items())},
    }


def realm_metrics(realm: str, *, workers: int) -> dict:
    """Return the realm's all-time counts and its recent window, as operators see them."""
    connection = redis_connection()
    pipe = connection.pipeline(transaction=False)
    pipe.hgetall(totals_key(realm))
    pipe.hget(CONNECTIONS_KEY, realm)
    pipe.hget(PEAK_CONNECTIONS_KEY, realm)
    pipe.hgetall(worker_totals_key(realm))
    totals, connections, peak, worker_totals = pipe.execute()
    return {
        "queries_processed": int(totals.get(b"processed", 0)),
        "errors": int(totals.get(b"errors", 0)),
        "cross_realm_requests": int(totals.get(b"cross_realm", 0)),
        "connections": int(connections or 0),
        "peak_connections": int(peak or 0),
        "workers": workers,
        "worker_queries": {name.decode(): int(count) for name, count in sorted(worker_totals.items())},
        **summarise(read_window(realm, connection), workers),
    }


def summary_metrics(workers_by_realm: dict[str, int]) -> dict:
    """Return totals across the realms and percentiles over all their recent windows."""
    connection = redis_connection()
    per_realm = {realm: realm_metrics(realm, workers=workers) for realm, workers in workers_by_realm.items()}
    samples = [sample for realm in workers_by_realm for sample in read_window(realm, connection)]
    window = summarise(samples, sum(workers_by_realm.values()))
    processed = sum(m["queries_processed"] for m in per_realm.values())
    errors = sum(m["errors"] for m in per_realm.values())
    return {
        "realms": len(per_realm),
        "queries_processed": processed,
        "errors": errors,
        "error_rate": errors / processed if processed else 0.0,
        "cross_realm_requests": sum(m["cross_realm_requests"] for m in per_realm.values()),
        "connections": sum(m["connections"] for m in per_realm.values()),
        "workers": sum(workers_by_realm.values()),
        "window_queries": window["window_queries"],
        "window_error_rate": window["error_rate"],
        "processing_time": window["processing_time"],
        "utilisation": window["utilisation"],
    }


class LiveRealmCollector:
    """Gauges read from Redis at scrape time: connections, peaks and recent percentiles.

    `realms_with_workers` returns {realm name: (available workers, queue depth, in flight)};
    the realms app supplies it so this module needs no import of it.
    """

    def __init__(self, realms_with_workers):
        self.realms_with_workers = realms_with_workers

    def collect(self):
        gauges = {
            "connections": GaugeMetricFamily("rentahal_realm_connections", "Live WebSocket connections.", labels=["realm"]),
            "peak_connections": GaugeMetricFamily(
                "rentahal_realm_peak_connections", "Most live connections seen at once.", labels=["realm"]
            ),
            "workers": GaugeMetricFamily("rentahal_realm_workers", "Available workers.", labels=["realm"]),
            "queue_depth": GaugeMetricFamily("rentahal_realm_queue_depth", "Queries waiting.", labels=["realm"]),
            "in_flight": GaugeMetricFamily("rentahal_realm_in_flight", "Queries being served now.", labels=["realm"]),
            "utilisation": GaugeMetricFamily(
                "rentahal_realm_utilisation", "Busy fraction of the realm's workers over the window.", labels=["realm"]
            ),
            "error_rate": GaugeMetricFamily(
                "rentahal_realm_error_rate", "Failed fraction of queries over the window.", labels=["realm"]
            ),
        }
        recent = GaugeMetricFamily(
            "rentahal_realm_recent_processing_seconds",
            "Processing-time percentiles of answered queries over the window.",
            labels=["realm", "quantile"],
        )
        worker_utilisation = GaugeMetricFamily(
            "rentahal_worker_utilisation", "Busy fraction of each worker over the window.", labels=["realm", "worker"]
        )
        for realm, (workers, depth, in_flight) in self.realms_with_workers().items():
            metrics = realm_metrics(realm, workers=workers)
            metrics["queue_depth"] = depth
            metrics["in_flight"] = in_flight
            for field, gauge in gauges.items():
                gauge.add_metric([realm], metrics[field])
            for pct in PERCENTILES:
                value = metrics["processing_time"][f"p{pct}"]
                if value is not None:
                    recent.add_metric([realm, str(pct / 100)], value)
            for worker, value in metrics["worker_utilisation"].items():
                worker_utilisation.add_metric([realm, worker], value)
        yield from gauges.values()
        yield recent
        yield worker_utilisation


class Exposition:
    """The registries one scrape reads, in the shape `generate_latest` expects."""

    def __init__(self, *sources):
        self.sources = sources

    def collect(self):
        for source in self.sources:
            yield from source.collect()


def register_collector(collector) -> None:
    """Add a collector read at every scrape (the realms app adds its live gauges)."""
    extra_collectors.append(collector)


class MetricsView(APIView):
    """Serve every process's counters in the Prometheus text format to scrapers
    (rentahal.metrics_access says who they are)."""

    authentication_classes = [MetricsTokenAuthentication]
    permission_classes = [IsMetricsScraper]
    content_negotiation_class = AnyAccept

    def get(self, request):
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc_dir:
            counters = CollectorRegistry()
            MultiProcessCollector(counters, path=multiproc_dir)
        else:
            counters = REGISTRY
        return HttpResponse(generate_latest(Exposition(counters, *extra_collectors)), content_type=CONTENT_TYPE_LATEST)


metrics_view = MetricsView.as_view()
