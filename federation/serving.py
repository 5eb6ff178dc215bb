"""The serving side of federation: what this broker advertises, its status for peers, and
`route`, running a peer's query on this broker's workers and streaming the answer back.

A routed query is served in the web process that received it (no RQ job): the peer is
waiting on the connection, so its answer streams straight back as NDJSON lines, a
`{"chunk"}` per piece and then `{"result", "result_type", "service_seconds", "broker"}`
or `{"error": {"code", "message"}}`. It may go on to another peer only while its hop count
is under `FEDERATION_MAX_HOPS`, and never to a broker it already came through.
"""
from __future__ import annotations

import asyncio
import dataclasses
import decimal
import logging
import time
from collections.abc import AsyncIterator

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from federation import actions, identity, limits
from federation.models import ROUTED_QUERY_TYPES, Peer, Settlement
from pools.clients import ModelRequest, ModelServerError
from pools.config import snapshot_cache
from pools.dispatch import serve
from pools.health import serving_workers
from pools.models import peer_worker_name
from pools.selection import NoWorkerAvailable
from realms.models import Realm
from realms.routing import queue_depth, realm_for_query_type
from rentahal.query_context import QueryContext, serving_query

logger = logging.getLogger(__name__)


def advertisement() -> actions.Advertisement:
    """Return what this broker serves peers now: the query types its own healthy workers
    serve (those a route can carry), its pool aliases, their summed concurrency, and its prices."""
    snapshot = snapshot_cache.current()
    local = [worker for worker in snapshot.workers.values() if not worker.is_remote and not worker.is_blacklisted]
    healthy = {name for realm in Realm.objects.all() for name in serving_workers(realm.name, None)}
    serving = [worker for worker in local if worker.name in healthy and worker.query_type in ROUTED_QUERY_TYPES]
    names = {worker.name for worker in serving}
    return actions.Advertisement(
        query_types=sorted({worker.query_type for worker in serving}),
        aliases=sorted({pool.name for pool in snapshot.pools if names.intersection(pool.members)}),
        capacity=sum(worker.max_concurrency for worker in serving),
        price_per_query=decimal.Decimal(str(settings.RENTAHAL_FEDERATION_PRICE_PER_QUERY)),
        price_per_second=decimal.Decimal(str(settings.RENTAHAL_FEDERATION_PRICE_PER_SECOND)),
    )


def status() -> dict:
    """Return realms, workers by type, queue depths and capacity, as a peer's `status` sees them."""
    snapshot = snapshot_cache.current()
    by_type: dict[str, int] = {}
    for worker in snapshot.workers.values():
        if not worker.is_remote:
            by_type[worker.query_type] = by_type.get(worker.query_type, 0) + 1
    offer = advertisement()
    return {
        "federation_id": identity.federation_id(),
        "realms": [
            {"name": realm.name, "query_type": realm.query_type, "queue_depth": queue_depth(realm),
             "workers": len(serving_workers(realm.name, realm.query_type))}
            for realm in Realm.objects.all()
        ],
        "workers_by_type": by_type,
        "capacity": offer.capacity,
    }


@dataclasses.dataclass(frozen=True)
class RoutedQuery:
    query_id: str
    user: str
    query_type: str
    prompt: str
    model_type: str
    image: str | None
    hops: int
    via: tuple[str, ...]


def admit(peer: Peer, routed: RoutedQuery) -> str:
    """Check the hop count and the path, take one of the peer's limits, and return the realm to serve in."""
    if routed.hops > settings.RENTAHAL_FEDERATION_MAX_HOPS:
        raise actions.HopLimit(f"The query crossed {routed.hops} brokers; at most {settings.RENTAHAL_FEDERATION_MAX_HOPS} are allowed.")
    if identity.federation_id() in routed.via or not routed.via or routed.via[-1] != peer.federation_id:
        raise actions.HopLimit("The query's path is a loop or does not end at the peer that sent it.", code="loop_detected")
    realm = realm_for_query_type(routed.query_type)
    limits.acquire(peer)
    return realm.name


def line(item: dict) -> bytes:
    return orjson.dumps(item) + b"\n"


async def stream_route(peer: Peer, routed: RoutedQuery, realm: str) -> AsyncIterator[bytes]:
    """Serve the query and yield its NDJSON lines; record it for settlement however it ends
    and give the peer's in-flight slot back."""
    pieces: asyncio.Queue[str | None] = asyncio.Queue()

    async def on_chunk(text: str) -> None:
        await pieces.put(text)

    request = ModelRequest(prompt=routed.prompt, query_type=routed.query_type, model_type=routed.model_type, image=routed.image)
    context = QueryContext(routed.query_id, routed.user, hops=routed.hops, via=routed.via)
    started = time.monotonic()

    async def run():
        with serving_query(context):
            try:
                return await serve(
                    request,
                    realm=realm,
                    affinity_key=routed.user,
                    on_chunk=on_chunk,
                    allow_remote=routed.hops < settings.RENTAHAL_FEDERATION_MAX_HOPS,
                    exclude=frozenset(peer_worker_name(broker, routed.query_type) for broker in routed.via),
                )
            finally:
                await pieces.put(None)

    task = asyncio.ensure_future(run())
    status = Settlement.Status.FAILED
    service_seconds = 0.0
    try:
        while (piece := await pieces.get()) is not None:
            yield line({"chunk": piece})
        try:
            served = await task
        except (NoWorkerAvailable, ModelServerError) as exc:
            message = exc.message if isinstance(exc, NoWorkerAvailable) else ModelServerError.public_reason
            logger.info("routed query %s from %s failed: %s", routed.query_id, peer.federation_id, exc)
            yield line({"error": {"code": exc.code, "message": message}})
            return
        status, service_seconds = Settlement.Status.DONE, served.service_seconds
        yield line({
            "result": served.answer.result,
            "result_type": served.answer.result_type,
            "service_seconds": round(served.service_seconds, 6),
            "broker": identity.federation_id(),
        })
    finally:
        if not task.done():
            task.cancel()
        limits.release(peer)
        await sync_to_async(settle_served)(peer, routed, service_seconds, status)
        logger.info("routed query %s from %s: %s in %.2fs", routed.query_id, peer.federation_id, status, time.monotonic() - started)


def settle_served(peer: Peer, routed: RoutedQuery, service_seconds: float, status: str) -> None:
    """Record the query on the serving side, at our advertised prices, and count the peer's spend."""
    row = actions.record_settlement(
        peer,
        direction=Settlement.Direction.SERVED,
        query_id=routed.query_id,
        user=routed.user,
        query_type=routed.query_type,
        service_seconds=service_seconds,
        price_per_query=decimal.Decimal(str(settings.RENTAHAL_FEDERATION_PRICE_PER_QUERY)),
        price_per_second=decimal.Decimal(str(settings.RENTAHAL_FEDERATION_PRICE_PER_SECOND)),
        status=status,
    )
    limits.add_spend(peer, row.amount)

