"""Calls to peers, each signed (federation.signing): `PeerClient`, the model-server client of
wire format `peer` that asks a peer's /api/federation/route to serve a query, and
`call_peer`, every other signed JSON call (join, advertise, discover, status, settlement).

Addresses go through the outbound policy (rentahal.outbound) like any model server's.
"""
from __future__ import annotations

import decimal
import hashlib
import hmac
import logging
import uuid

import aiohttp
import orjson
import yarl
from asgiref.sync import sync_to_async
from django.conf import settings

from federation import actions, identity
from federation.models import Peer, Settlement
from federation.signing import sign_request
from pools.clients.base import (
    CallLimits,
    ChunkCallback,
    ModelAnswer,
    ModelClient,
    ModelRequest,
    ModelServerError,
    malformed,
    post_for_answer,
    probe_status,
)
from rentahal import outbound
from rentahal.http_session import model_session
from rentahal.query_context import current_query

logger = logging.getLogger(__name__)

ROUTE_PATH = "/api/federation/route"
STATUS_PATH = "/api/federation/status"


def pseudonym(user: str, peer_id: str) -> str:
    """Return how a peer knows this user: stable per peer, unlinkable across peers, never the guid."""
    return hmac.new(settings.SECRET_KEY.encode(), f"{peer_id}:{user}".encode(), hashlib.sha256).hexdigest()[:32]


class PeerError(Exception):
    """A signed call to a peer that did not succeed; `status` is its HTTP status (None: unreachable)."""

    def __init__(self, message: str, *, status: int | None = None, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


async def call_peer(base_url: str, method: str, path: str, payload: dict | None = None, *, timeout: float = 10.0) -> dict:
    """Make a signed JSON call to a peer and return its JSON answer; raise PeerError otherwise."""
    url = base_url.rstrip("/") + path
    body = orjson.dumps(payload) if payload is not None else b""
    headers = {**sign_request(method, url, body), "Content-Type": "application/json"}
    client_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, settings.RENTAHAL_CONNECT_TIMEOUT))
    try:
        # The policy judges where a call connects; the query string (settlement's `since`) is not its business.
        outbound.check_url(base_url.rstrip("/") + path.partition("?")[0])
        async with model_session() as session:
            async with session.request(method, yarl.URL(url, encoded=True), data=body, headers=headers, timeout=client_timeout, allow_redirects=False) as response:
                raw = await response.content.read(settings.RENTAHAL_MAX_ANSWER_BYTES)
                status = response.status
    except outbound.ForbiddenAddress as exc:
        raise PeerError(f"{url} is refused by the outbound address policy: {exc}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise PeerError(f"{url} could not be reached: {exc or type(exc).__name__}") from exc
    try:
        data = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise PeerError(f"{url} answered HTTP {status} with a body that is not JSON", status=status) from None
    if not 200 <= status < 300 or not isinstance(data, dict):
        raise PeerError(f"{url} answered HTTP {status}: {data}", status=status, body=data if isinstance(data, dict) else {})
    return data


async def fetch_well_known(base_url: str, *, timeout: float = 10.0) -> dict:
    """Return a broker's published identity (unsigned: it is the key to check signatures with)."""
    url = base_url.rstrip("/") + identity.WELL_KNOWN_PATH
    try:
        outbound.check_url(url)
        async with model_session() as session:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as response:
                if response.status != 200:
                    raise PeerError(f"{url} answered HTTP {response.status}", status=response.status)
                data = orjson.loads(await response.content.read(64 * 1024))
    except outbound.ForbiddenAddress as exc:
        raise PeerError(f"{url} is refused by the outbound address policy: {exc}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise PeerError(f"{url} could not be read: {exc or type(exc).__name__}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise PeerError(f"{url} is not a federation document")
    return data


class PeerClient(ModelClient):
    """Ask a peer broker to serve a query (`POST /api/federation/route`, docs/federation.md).

    The peer streams NDJSON: `{"chunk": ...}` lines, then `{"result", "result_type",
    "service_seconds", "broker"}` or `{"error": {...}}`. Each chunk is passed on as it
    arrives, so the user reads a peer's answer while it is written, as a local worker's;
    like one, a peer that dies before its first chunk is failed over, and one that dies
    after it fails the query (`pools.dispatch.serve`). The query carries the hop count and the
    brokers it came through, and a per-peer pseudonym instead of the user's guid. Both ends
    record the query for settlement; the user is charged by their own broker as for a local
    answer (`accounts.billing`).
    """

    wire_format = "peer"

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        context = current_query()
        query_id = context.query_id if context else str(uuid.uuid4())
        user = context.user if context else ""
        hops = (context.hops if context else 0) + 1
        via = [*(context.via if context else ()), identity.federation_id()]
        peer_id = worker.model
        if hops > settings.RENTAHAL_FEDERATION_MAX_HOPS or peer_id in via:
            raise ModelServerError(f"{worker.name}: the query may not cross another broker", kind="client")
        seen_as = pseudonym(user, peer_id)
        payload = {
            "query_id": query_id,
            "user": seen_as,
            "query_type": request.query_type,
            "prompt": request.prompt,
            "model_type": request.model_type,
            "image": request.image,
            "hops": hops,
            "via": via,
        }
        url = worker.base_url + ROUTE_PATH
        headers = sign_request("POST", url, orjson.dumps(payload))
        try:
            async with post_for_answer(session, worker, ROUTE_PATH, payload, limits=limits, headers=headers) as body:
                async for line in body.lines():
                    item = parse_line(worker, line)
                    if "chunk" in item:
                        if on_chunk is not None:
                            await on_chunk(str(item["chunk"]))
                        continue
                    if "error" in item:
                        error = item["error"] if isinstance(item["error"], dict) else {}
                        raise ModelServerError(f"{worker.name} failed the query: {error.get('code')}: {error.get('message')}")
                    answer = final_answer(worker, item, body.time_to_first_byte)
                    break
                else:
                    raise malformed(worker, "the stream ended without its final line")
        except ModelServerError as exc:
            # A refusal (4xx, 429) served nothing; a fault or a timeout may have cut a query
            # the peer took, and the peer records that one as failed too.
            if exc.kind in ("server", "timeout"):
                await sync_to_async(settle_sent)(peer_id, query_id, user, seen_as, request.query_type, 0.0, Settlement.Status.FAILED)
            raise
        await sync_to_async(settle_sent)(peer_id, query_id, user, seen_as, request.query_type, answer[1], Settlement.Status.DONE)
        return answer[0]

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        url = worker.base_url + STATUS_PATH
        return await probe_status(session, worker, STATUS_PATH, timeout=timeout, headers=sign_request("GET", url, b""))


def parse_line(worker, line: bytes) -> dict:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise malformed(worker, f"a line that is not JSON ({exc})") from exc
    if not isinstance(item, dict):
        raise malformed(worker, "a line that is not an object")
    return item


def final_answer(worker, item: dict, time_to_first_byte: float | None) -> tuple[ModelAnswer, float]:
    result, result_type, seconds = item.get("result"), item.get("result_type", "text"), item.get("service_seconds")
    if not isinstance(result, str) or result_type not in ("text", "image", "audio"):
        raise malformed(worker, "a final line without a result")
    if not isinstance(seconds, (int, float)) or not 0 <= seconds < 86400:
        raise malformed(worker, "a final line without service_seconds")
    return ModelAnswer(result=result, result_type=result_type, time_to_first_byte=time_to_first_byte), float(seconds)


def settle_sent(
    peer_id: str, query_id: str, user_guid: str, seen_as: str, query_type: str, service_seconds: float, status: str
) -> None:
    """Record the query on the requesting side, on its user's shard, at the prices the peer advertised."""
    peer = Peer.objects.filter(federation_id=peer_id).first()
    if peer is None:
        logger.warning("settlement of %s skipped: peer %s is gone", query_id, peer_id)
        return
    advertised = peer.advertised or {}
    actions.record_settlement(
        peer,
        direction=Settlement.Direction.SENT,
        query_id=query_id,
        user=seen_as,
        user_guid=user_guid,
        query_type=query_type,
        service_seconds=service_seconds,
        price_per_query=decimal.Decimal(str(advertised.get("price_per_query") or 0)),
        price_per_second=decimal.Decimal(str(advertised.get("price_per_second") or 0)),
        status=status,
    )
