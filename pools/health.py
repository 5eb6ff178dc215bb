"""Is this worker healthy or cooling down: query outcomes, cooldowns by error class, and the
periodic probe of every worker (docs/protocol.md §3). Scores, the health rules' blacklist,
cooldowns and EWMAs live in Redis (pools.state) so every process agrees; a probe or an outcome
writes no database row and leaves the pool-config version alone.

When the rules blacklist a worker or restore it, sysops are told at once (`worker_alert`,
docs/protocol.md §1), and `health_changed` is sent after it and after every health round so
that an app that knows the realms can tell whether one lost its last serving worker
(realms/alerts.py); this app imports no other."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import aiohttp
from asgiref.sync import sync_to_async
from django.conf import settings
from django.dispatch import Signal

from pools import state
from pools.clients import ModelServerError, client_for
from pools.config import snapshot_cache
from pools.models import Worker
from rentahal import outbound
from rentahal.pushes import POOL_EVENTS, alert_sysops, send_event_on_commit

logger = logging.getLogger(__name__)

# Health score rules of the original broker (docs/protocol.md §3).
PROBE_OK_GAIN = 10.0
PROBE_BAD_STATUS_LOSS = 10.0
PROBE_UNREACHABLE_LOSS = 5.0
RESTORED_SCORE = 50.0
# What a failed query costs a worker's score, by error kind. A rate limit is the server
# working as designed, so it only cools; a client error is the request's fault, not the
# server's, so it costs nothing.
QUERY_FAILURE_LOSS = {"server": 10.0, "timeout": 5.0, "auth": 10.0, "rate_limited": 0.0}

# Sent (sender=None) after a health round and after a query's outcome blacklisted a worker:
# which workers serve each realm may have changed.
health_changed = Signal()


def announce_health_changed() -> None:
    """Send `health_changed`; a receiver's failure is logged, never raised, as telling
    sysops must not stop a health round or a query's bookkeeping."""
    for receiver, result in health_changed.send_robust(sender=None):
        if isinstance(result, Exception):
            logger.error("%s failed after a health change", receiver, exc_info=result)


def alert_worker(worker: str, change: str, reason: str) -> None:
    """Tell sysops the health rules blacklisted (`change`='blacklisted') or restored the
    worker, and why; subscribers of `events.pools` learn it as a `worker.health` event."""
    logger.warning("worker %s %s: %s", worker, change, reason)
    alert_sysops({"type": "worker_alert", "worker": worker, "state": change, "reason": reason})
    publish_worker_health(worker, change, reason)


def publish_worker_health(worker: str, op: str, reason: str) -> None:
    """Publish a worker's health on `events.pools`, naming the pools it sits in so a
    subscriber can follow one pool; a probe's heartbeat only while someone listens.

    Runtime health lives in Redis, so there is no transaction to wait for: outside one,
    `send_event_on_commit` sends at once."""
    from pools.config import snapshot_cache

    pools = sorted({pool.name for pool in snapshot_cache.current().pools if worker in pool.members})
    event = {"type": "worker.health", "op": op, "name": worker, "pools": pools, "reason": reason}
    send_event_on_commit(POOL_EVENTS, event, using="default", if_listened=op == "heartbeat")


def cooldown_seconds(error: ModelServerError, consecutive_failures: int = 1) -> float | None:
    """Return how long a worker sits out after this error; None when it should not.

    Server faults and timeouts double with each consecutive failure (up to the maximum), so
    a flapping server is tried less and less often; a 429 honours Retry-After; refused
    credentials wait for an operator.
    """
    maximum = settings.RENTAHAL_COOLDOWN_MAX_SECONDS
    if error.kind == "client":
        return None
    if error.kind == "auth":
        return settings.RENTAHAL_COOLDOWN_AUTH_SECONDS
    if error.kind == "rate_limited":
        wait = error.retry_after if error.retry_after is not None else settings.RENTAHAL_COOLDOWN_RATE_LIMITED_SECONDS
        return min(wait, maximum)
    base = settings.RENTAHAL_COOLDOWN_TIMEOUT_SECONDS if error.kind == "timeout" else settings.RENTAHAL_COOLDOWN_SERVER_SECONDS
    return min(base * 2 ** max(0, consecutive_failures - 1), maximum)


def record_failure(worker: str, error: ModelServerError) -> float | None:
    """Count a failed query against the worker; return the cooldown it got (None for a client error)."""
    if not error.is_server_fault:
        return None
    failures = state.settle_calls([state.CallOutcome(worker, ok=False)])[0]
    return cool_down_after_failure(worker, error, failures)


def cool_down_after_failure(worker: str, error: ModelServerError, consecutive_failures: int) -> float | None:
    """Sit the worker out after a server fault already counted (`state.settle_calls`), for
    longer the more faults in a row, and take from its health; return the cooldown."""
    seconds = cooldown_seconds(error, consecutive_failures)
    if seconds:
        state.set_cooldown(worker, until=time.time() + seconds, kind=error.kind, reason=error.message[:200])
    loss = QUERY_FAILURE_LOSS.get(error.kind, 0.0)
    logger.info("worker %s failed (%s), cooling down %ss: %s", worker, error.kind, seconds, error.message)
    if loss and state.change_health(worker, -loss):
        alert_worker(worker, "blacklisted", f"query failed ({error.kind}): {error.message[:200]}")
        announce_health_changed()
    return seconds


def serving_workers(realm: str, query_type: str | None) -> list[str]:
    """Return the names of the workers of `query_type` (any if None) that serve the realm and
    that neither an operator nor the health rules blacklisted.

    The configuration comes from the process's pool snapshot, the health rules' blacklist
    from Redis in one round trip.
    """
    names = snapshot_cache.current().serving(realm, query_type)
    health = state.health_of(names)
    return [name for name in names if not health[name].is_blacklisted]


def serving_peers(query_type: str) -> list[str]:
    """Return the names of the peer brokers' workers of `query_type` (one per active peer that
    advertised it) that neither an operator nor the health rules blacklisted."""
    names = sorted(
        worker.name
        for worker in snapshot_cache.current().workers.values()
        if worker.is_remote and worker.query_type == query_type and not worker.is_blacklisted
    )
    health = state.health_of(names)
    return [name for name in names if not health[name].is_blacklisted]


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    worker: str
    status: int | None  # None: the format has no health route
    error: str = ""


async def probe_worker(session: aiohttp.ClientSession, worker: Worker, *, timeout: float) -> ProbeResult:
    try:
        status = await client_for(worker.wire_format).probe(session, worker, timeout=timeout)
    except ModelServerError as exc:
        return ProbeResult(worker.name, None, exc.message)
    return ProbeResult(worker.name, status)


async def probe_all(workers: list[Worker], *, timeout: float) -> list[ProbeResult]:
    """Probe every worker at once, each with its format's natural health route."""
    limit = asyncio.Semaphore(settings.RENTAHAL_HEALTH_CHECK_CONCURRENCY)

    async def probe(session, worker):
        async with limit:
            return await probe_worker(session, worker, timeout=timeout)

    async with outbound.guarded_session() as session:
        return list(await asyncio.gather(*(probe(session, worker) for worker in workers)))


def apply_probe(worker: Worker, result: ProbeResult) -> str:
    """Apply one probe's result to the worker's runtime health; return what happened, for the log.

    A score that reaches 0 blacklists the worker until it answers a probe again. An
    operator's blacklist (`Worker.is_blacklisted`) is configuration and no probe lifts it.
    """
    if result.error:
        change = state.change_health(worker.name, -PROBE_UNREACHABLE_LOSS)
        outcome = f"unreachable: {result.error}"
    elif result.status is None:
        return "no health route; unchanged"
    elif result.status == 200:
        # A server that answers its health route is back: its cooldown ends with the gain.
        change = state.record_answer(worker.name, gain=PROBE_OK_GAIN, restored=RESTORED_SCORE, at=time.time())
        outcome = "healthy"
    else:
        change = state.change_health(worker.name, -PROBE_BAD_STATUS_LOSS)
        outcome = f"answered HTTP {result.status}"
    if change:
        alert_worker(worker.name, change, f"health probe: {outcome}")
    else:
        publish_worker_health(worker.name, "heartbeat", f"health probe: {outcome}")
    return outcome


def check_worker_health(workers: list[Worker] | None = None) -> list[tuple[str, str]]:
    """Probe every worker (or those given, an operator's "check now") in parallel and update
    their health; return (worker, what happened) pairs.

    `health_changed` is sent after every round, even one with no worker to probe, so a realm
    whose last worker was removed is noticed too."""
    workers = list(Worker.objects.all()) if workers is None else list(workers)
    report = []
    if workers:
        from asgiref.sync import async_to_sync

        results = async_to_sync(probe_all)(workers, timeout=settings.RENTAHAL_HEALTH_CHECK_TIMEOUT)
        report = [(worker.name, apply_probe(worker, result)) for worker, result in zip(workers, results)]
    announce_health_changed()
    return report


async def acheck_worker_health() -> list[tuple[str, str]]:
    return await sync_to_async(check_worker_health)()
