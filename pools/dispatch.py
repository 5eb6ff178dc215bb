"""Serve one model request: pick a worker, call it in its wire format, report the outcome, and
fail over to another member when the server was at fault."""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from django.conf import settings

from pools import actions, config, providers, state
from pools.clients import CallLimits, ChunkCallback, ModelAnswer, ModelRequest, ModelServerError, client_for
from pools.models import Strategy
from pools.selection import NoWorkerAvailable, Plan, Selection, Snapshot, plan_selection, select_worker
from pools.waiting import Line
from rentahal.errors import STORE_OUTAGES
from rentahal.http_session import model_session

logger = logging.getLogger(__name__)

# How long a query waits between looks when every candidate is at its concurrency cap, or
# others stand ahead of it in the line (`pools.waiting`); the next in line looks fastest.
BUSY_POLL_SECONDS = (0.05, 0.1, 0.2, 0.5)
NEXT_IN_LINE_POLL_SECONDS = 0.05
# A place in that line not renewed for this long is dropped: its waiter's process died. A
# waiter renews it at every look (at most BUSY_POLL_SECONDS apart), so a dead one holds the
# line up for seconds, not for a lease's lifetime.
LINE_PLACE_SECONDS = 3.0
# Told a waiting request's place in the line of `pools.waiting` (1 = next).
WaitCallback = Callable[[int], Awaitable[None]]
# Heartbeats (RENTAHAL_WORKER_HEARTBEAT) an in-flight lease outlives its last renewal.
LEASE_HEARTBEATS = 3


@dataclasses.dataclass(frozen=True)
class Served:
    """The answer and who gave it.

    `worker_realm` is the realm that lent the worker (its pool's realm, else its own; blank
    for an any-realm worker) and `is_cross_realm` says it is not the query's realm.
    `service_seconds` is how long the call that answered took, the time a user is billed
    for (failed attempts and waits for a free member are not counted).
    """

    worker: str
    answer: ModelAnswer
    pool: str = ""
    strategy: str = ""
    worker_realm: str = ""
    is_cross_realm: bool = False
    attempts: int = 1
    service_seconds: float = 0.0


def call_limits() -> CallLimits:
    return CallLimits(
        connect_timeout=settings.RENTAHAL_CONNECT_TIMEOUT,
        read_timeout=settings.RENTAHAL_READ_TIMEOUT,
        max_answer_bytes=settings.RENTAHAL_MAX_ANSWER_BYTES,
    )


def plan_for(snapshot: Snapshot, request: ModelRequest, realm: str, *, allow_remote: bool, peers_only: bool) -> Plan:
    """Return where to look for the request's worker in this configuration."""
    plan = plan_selection(
        snapshot, query_type=request.query_type, realm=realm, model_name=request.model_name, model_type=request.model_type
    )
    if not allow_remote:
        return plan.local
    if peers_only:
        return plan.remote
    return plan


def check_hosted_query(query_type: str, realm: str, *, model_type: str, model_name: str = "") -> None:
    """Refuse a query for a hosted provider (model type `claude`, `huggingface`) that cannot
    be served however long it waits: no worker of that provider could take it, or none has a
    key. Called before the query is written, so nothing is queued or charged; a provider
    that fails later fails the query like any model server."""
    if model_type not in providers.HOSTED_WIRE_FORMATS:
        return
    plan = plan_selection(
        config.snapshot_cache.current(), query_type=query_type, realm=realm, model_name=model_name, model_type=model_type
    )
    if plan.missing_alias:
        return
    workers = [worker for tier in plan.tiers for worker in tier.workers]
    if not workers:
        raise NoWorkerAvailable(f"No {plan.wanted} is registered.")
    wire_format = providers.HOSTED_WIRE_FORMATS[model_type]
    if not any(providers.provider_key(wire_format, worker.api_key) for worker in workers):
        raise providers.MissingProviderKey(providers.missing_key_message(wire_format))


def ticket_pool(plan: Plan) -> int | None:
    """Return the pool whose round-robin ticket is taken with the state read (the first one tried)."""
    pools = plan.pools
    if pools and pools[0].strategy in (Strategy.ROUND_ROBIN, Strategy.AUTO):
        return pools[0].id
    return None


async def serve(
    request: ModelRequest,
    *,
    realm: str,
    affinity_key: str = "",
    on_chunk: ChunkCallback | None = None,
    allow_remote: bool = True,
    peers_only: bool = False,
    exclude: frozenset[str] = frozenset(),
    party: str = "",
    waiter: str = "",
    on_wait: WaitCallback | None = None,
) -> Served:
    """Return the answer of the worker chosen for the request in `realm`.

    `affinity_key` (a conversation id, else the user's guid) lets a pool keep one
    conversation on one model server. A server fault moves the request to another member,
    up to RENTAHAL_MAX_ATTEMPTS calls; a bad request is not retried. Once chunks of an
    answer have reached the user, a failure is final: a retry would stream a second answer
    into the first.

    `allow_remote=False` leaves peer brokers out (a query that may not cross another broker);
    `peers_only=True` tries only them (a query its realm and backups had no room for);
    `exclude` names workers not to try (the peer brokers a routed query came through).

    While every member it may use is busy, the request waits in the line of `pools.waiting`
    as `waiter` of `party` (the query and its user), for up to RENTAHAL_BUSY_WAIT_SECONDS;
    only the head of the line takes a free slot, so a party with many waiting requests
    cannot keep the slots from another party's next one. `on_wait` is told the request's
    place in that line (1 = next) when it starts waiting and whenever the place changes.

    Raises NoWorkerAvailable when nobody can serve (`is_busy` when every member stayed busy
    meanwhile: the caller may put the request back to wait longer), ModelServerError when
    the call failed.
    """
    line = Line(
        f"{realm}:{request.query_type}:{request.model_type}:{request.model_name}",
        party=party or affinity_key,
        waiter=waiter or uuid.uuid4().hex,
        ttl=LINE_PLACE_SECONDS,
    )
    options = dict(affinity_key=affinity_key, on_chunk=on_chunk, exclude=exclude, on_wait=on_wait)
    try:
        # The configuration this process loaded last is used as it is, and its version checked
        # by the first state read (no round trip of its own); the DB is read only when it moved.
        snapshot = config.snapshot_cache.last_loaded()
        if snapshot is not None:
            plan = plan_for(snapshot, request, realm, allow_remote=allow_remote, peers_only=peers_only)
            try:
                return await serve_in_turn(plan, request, line, config_version=snapshot.version, **options)
            except state.ConfigurationChanged:
                pass
        snapshot = await sync_to_async(config.snapshot_cache.current)()
        plan = plan_for(snapshot, request, realm, allow_remote=allow_remote, peers_only=peers_only)
        return await serve_in_turn(plan, request, line, **options)
    finally:
        line.leave()


async def serve_in_turn(
    plan: Plan,
    request: ModelRequest,
    line: Line,
    *,
    affinity_key: str,
    on_chunk: ChunkCallback | None,
    exclude: frozenset[str],
    on_wait: WaitCallback | None = None,
    config_version: str = "",
) -> Served:
    """Serve the request from `plan`; with `config_version`, the first state read raises
    ConfigurationChanged, having taken nothing, when the configuration is no longer at it."""
    advance = ticket_pool(plan)
    # Workers whose format cannot do what is asked are passed over like ones that failed it.
    failed: set[str] = set(exclude) | unable_workers(plan, request)
    full: set[str] = set()
    last_error: ModelServerError | None = None
    streamed = False
    attempts = 0
    busy_waits = 0
    busy_deadline = time.monotonic() + settings.RENTAHAL_BUSY_WAIT_SECONDS

    async def forward(text: str) -> None:
        nonlocal streamed
        streamed = True
        await on_chunk(text)

    join = False
    told_place = 0
    while attempts < settings.RENTAHAL_MAX_ATTEMPTS:
        # A look skips the line when nobody waits in it (its state read checks: LineOccupied);
        # a busy one, or one that found others waiting, joins it.
        ahead = line.rank() if join or busy_waits or line.joined else 0
        if busy_waits and on_wait is not None and ahead + 1 != told_place:
            told_place = ahead + 1
            await on_wait(told_place)
        fence = state.Fence(config.snapshot_cache.version_key, config_version, "" if line.joined else line.key)
        join, config_version = False, ""
        try:
            if ahead:
                raise NoWorkerAvailable(f"No {plan.wanted} is available: {ahead} queries wait ahead.", is_busy=True)
            selection = pick(plan, request, affinity_key=affinity_key, advance=advance, failed=failed, full=full, fence=fence)
        except state.LineOccupied:
            join = True
            continue
        except NoWorkerAvailable as exc:
            if exc.is_busy and time.monotonic() < busy_deadline:
                pause = BUSY_POLL_SECONDS[min(busy_waits, len(BUSY_POLL_SECONDS) - 1)]
                await asyncio.sleep(NEXT_IN_LINE_POLL_SECONDS if ahead <= 1 else pause)
                busy_waits += 1
                full.clear()
                continue
            if last_error is not None:
                raise last_error from None
            raise
        worker = selection.worker
        pool_id = selection.pool.id if selection.pool else None
        choice = state.Choice(
            pool_id,
            affinity_key=affinity_key,
            remember=selection.strategy == Strategy.AFFINITY,
            advance_pool=pool_id if selection.pool and pool_id != advance else None,
        )
        lease = state.acquire_lease(worker.name, cap=worker.max_concurrency, ttl=lease_seconds(), choice=choice)
        if lease is None:
            full.add(worker.name)
            continue
        line.leave()
        attempts += 1
        started = time.monotonic()
        try:
            async with model_session() as session, renewing(worker.name, lease):
                client = client_for(worker.wire_format)
                if request.is_embedding:
                    answer = await client.embed(session, worker, request, limits=call_limits())
                else:
                    answer = await client.call(
                        session, worker, request, limits=call_limits(), on_chunk=forward if on_chunk else None
                    )
        except ModelServerError as exc:
            await actions.record_attempt(
                selection, attempts, lease=lease, error=exc, duration=time.monotonic() - started
            )
            logger.warning("attempt %d on %s failed (%s): %s", attempts, worker.name, exc.kind, exc.message)
            if not exc.is_server_fault or streamed:
                raise
            logger.info("failing over from %s", worker.name)
            failed.add(worker.name)
            last_error = exc
            continue
        except BaseException:
            state.release_lease(worker.name, lease)
            raise
        duration = time.monotonic() - started
        await actions.record_attempt(selection, attempts, lease=lease, answer=answer, duration=duration)
        return served_by(selection, answer, attempts, service_seconds=duration)
    raise last_error


def unable_workers(plan: Plan, request: ModelRequest) -> set[str]:
    """Return the plan's workers whose wire format cannot serve the request (embeddings)."""
    if not request.is_embedding:
        return set()
    return {
        worker.name for tier in plan.tiers for worker in tier.workers if not client_for(worker.wire_format).serves_embeddings
    }


def pick(
    plan: Plan,
    request: ModelRequest,
    *,
    affinity_key: str,
    advance: int | None,
    failed: set[str],
    full: set[str],
    fence: state.Fence = state.Fence(),
) -> Selection:
    """Read the shared state and select; a pooled query reads its pools' members first and
    the other workers of the type only when no pool member can serve. The first read checks
    `fence`."""
    options = dict(
        prompt=request.prompt, exclude=frozenset(failed), full=frozenset(full), explore=settings.RENTAHAL_LATENCY_EXPLORE
    )
    if plan.pooled is not None:
        shared = state.read_state(plan.pooled, affinity_key=affinity_key, advance_pool=advance, fence=fence)
        try:
            return select_worker(plan.pooled, shared, **options)
        except NoWorkerAvailable:
            advance, fence = None, state.Fence()
    return select_worker(plan, state.read_state(plan, affinity_key=affinity_key, advance_pool=advance, fence=fence), **options)


def served_by(selection: Selection, answer: ModelAnswer, attempts: int, *, service_seconds: float) -> Served:
    return Served(
        worker=selection.worker.name,
        answer=answer,
        pool=selection.pool.name if selection.pool else "",
        strategy=selection.strategy,
        worker_realm=selection.source_realm,
        is_cross_realm=selection.is_cross_realm,
        attempts=attempts,
        service_seconds=service_seconds,
    )


def lease_seconds() -> float:
    """Return how long an in-flight lease lives unless renewed: three heartbeats.

    A call renews its lease every heartbeat (`renewing`), so only a process that died (a
    SIGKILLed realm worker) lets one expire, and its calls stop counting against the
    model server's cap as soon as its jobs are run again (README, "Lost work is re-run").
    A lease that lived as long as the longest call kept the server "busy" for minutes
    after such a kill, failing everyone's queries to it."""
    return LEASE_HEARTBEATS * settings.RENTAHAL_WORKER_HEARTBEAT


@contextlib.asynccontextmanager
async def renewing(worker: str, lease: str):
    """Renew the lease every heartbeat while the block runs."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(settings.RENTAHAL_WORKER_HEARTBEAT)
            try:
                state.renew_lease(worker, lease, ttl=lease_seconds())
            except STORE_OUTAGES as exc:
                logger.warning("could not renew a lease on %s: %s", worker, exc)

    renewer = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewer.cancel()
