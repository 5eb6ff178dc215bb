"""The federation endpoints under /api/federation/ (docs/federation.md) and the well-known
identity document. One authentication class verifies every signed peer request before any
view runs (federation.signing), as Synapse's Authenticator does; views get the peer as
`request.user` and stay thin: parse, check, call one action or serving function, answer."""
from __future__ import annotations

import datetime
import logging

from asgiref.sync import async_to_sync
from django.conf import settings
from django.http import StreamingHttpResponse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions
from rest_framework.authentication import BaseAuthentication
from rest_framework.response import Response
from rest_framework.views import APIView

from federation import actions, identity, limits, serving, settlement, signing
from federation.client import PeerError, fetch_well_known
from federation.models import Peer
from federation.serializers import (
    AdvertiseSerializer,
    DiscoverSerializer,
    JoinAnswerSerializer,
    JoinSerializer,
    RouteLineSerializer,
    RouteSerializer,
    SettlementSerializer,
    StatusSerializer,
)
from pools.state import client as redis_client
from rentahal.errors import BodyTooLarge, Invalid

logger = logging.getLogger(__name__)

# A peer's keys are fetched again for an unknown key id at most this often (a rotation).
KEY_REFRESH_SECONDS = 60


def own_url(request) -> str:
    """Return the request's URL as peers address it: our public base URL and the path, so a
    request signed for another broker or path does not verify here."""
    return identity.base_url() + request.get_full_path()


def peer_key(peer: Peer, kid: str) -> str | None:
    now = timezone.now()
    for entry in peer.keys or []:
        if isinstance(entry, dict) and entry.get("key_id") == kid and identity.is_key_valid(entry, now):
            return entry.get("public_key")
    return None


def refreshed_key(peer: Peer, kid: str) -> str | None:
    """Fetch the peer's published keys once a minute at most when it signs with a key we do
    not know yet (it rotated), and return that key if it is now published."""
    if not redis_client().set(f"federation:key_refresh:{peer.federation_id}", 1, nx=True, ex=KEY_REFRESH_SECONDS):
        return None
    try:
        document = async_to_sync(fetch_well_known)(peer.base_url)
    except PeerError as exc:
        logger.warning("could not refresh the keys of %s: %s", peer.federation_id, exc)
        return None
    if document.get("federation_id") != peer.federation_id:
        return None
    keys = [entry for entry in document["keys"] if isinstance(entry, dict)]
    if not any(entry.get("key_id") == kid for entry in keys):
        return None
    return peer_key(actions.update_peer_keys(peer, keys), kid)


class PeerSignature(BaseAuthentication):
    """Turn a valid signature of an active peer into that peer (401 `bad_signature` otherwise)."""

    # A broker that asked to join us waits for our approval; its first advertisement to us
    # is signed while we still list it as pending.
    statuses = (Peer.Status.ACTIVE,)

    def authenticate(self, request):
        found: dict[str, Peer] = {}

        def lookup(federation_id: str, kid: str) -> str | None:
            peer = Peer.objects.filter(federation_id=federation_id).first()
            if peer is None or not self.accepts(peer):
                return None
            found["peer"] = peer
            return peer_key(peer, kid) or (refreshed_key(peer, kid) if peer.is_active else None)

        raw = request._request.body
        signing.verify_request(request.method, own_url(request), request.headers, raw, lookup=lookup)
        return found["peer"], None

    def accepts(self, peer: Peer) -> bool:
        return peer.status in self.statuses

    def authenticate_header(self, request):
        return 'Signature realm="rentahal-federation"'


class PeerSignatureAwaitingUs(PeerSignature):
    def accepts(self, peer: Peer) -> bool:
        return peer.is_active or (peer.status == Peer.Status.PENDING and peer.awaiting_their_approval)


class IsPeer(permissions.BasePermission):
    def has_permission(self, request, view):
        return isinstance(request.user, Peer)


class PeerView(APIView):
    authentication_classes = [PeerSignature]
    permission_classes = [IsPeer]


class WellKnownView(APIView):
    """This broker's federation id, base URL and public keys (current, and retired ones until they expire)."""

    authentication_classes = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(operation_id="federation_keys", responses={200: OpenApiResponse(description="federation id, base URL, keys")})
    def get(self, request):
        return Response(identity.well_known_document())


class JoinView(APIView):
    """A broker asks to join: signed with the key it sends, carrying an invitation token or not."""

    authentication_classes = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        request=JoinSerializer,
        responses={
            201: JoinAnswerSerializer,
            202: JoinAnswerSerializer,
            429: OpenApiResponse(description="too_many_joins from this address, with Retry-After"),
        },
    )
    def post(self, request):
        limits.take_join(request.META.get("REMOTE_ADDR", ""))
        raw = request._request.body
        serializer = JoinSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        keys = [
            {"key_id": key["key_id"], "public_key": key["public_key"],
             "valid_until": key["valid_until"].isoformat() if key.get("valid_until") else None}
            for key in data["keys"]
        ]

        def lookup(federation_id: str, kid: str) -> str | None:
            if federation_id != data["federation_id"]:
                return None
            key = next((key["public_key"] for key in keys if key["key_id"] == kid), None)
            return key if key and identity.key_id_of(key) == kid else None

        signing.verify_request(request.method, own_url(request), request.headers, raw, lookup=lookup)
        peer = actions.record_join(
            federation_id=data["federation_id"], base_url=data["base_url"], keys=keys, token=data["token"]
        )
        answer = {"status": "active" if peer.is_active else "pending", **identity.well_known_document()}
        return Response(answer, status=201 if peer.is_active else 202)


class AdvertiseView(PeerView):
    """A peer says what it serves now; we answer with what we serve."""

    authentication_classes = [PeerSignatureAwaitingUs]

    @extend_schema(request=AdvertiseSerializer, responses={200: AdvertiseSerializer})
    def post(self, request):
        serializer = AdvertiseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        actions.record_advertisement(request.user, actions.Advertisement(**serializer.validated_data))
        return Response(serving.advertisement().as_data())


class DiscoverView(PeerView):
    """The active peers we know, with their keys and offers, for gossip."""

    @extend_schema(responses={200: DiscoverSerializer})
    def get(self, request):
        peers = Peer.objects.filter(status=Peer.Status.ACTIVE).exclude(pk=request.user.pk)
        return Response({"peers": [
            {"federation_id": peer.federation_id, "base_url": peer.base_url, "keys": peer.keys, "advertised": peer.advertised}
            for peer in peers
        ]})


class StatusView(PeerView):
    """Realms, workers by type, queue depths and capacity."""

    @extend_schema(responses={200: StatusSerializer})
    def get(self, request):
        return Response(serving.status())


class RouteTooLarge(BodyTooLarge):
    """A body over the route's own cap, FEDERATION_MAX_ROUTE_BYTES, not Django's."""

    code = "route_too_large"


def read_route_body(request) -> None:
    """Read the body of a `route` under FEDERATION_MAX_ROUTE_BYTES, or refuse it with 413.

    Django would read it under DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB), too little for a vision
    query's image and meant for forms. The body is read before the signature is checked
    (the signature covers its digest), and kept where `HttpRequest.body` keeps what it read,
    so the signature check and the parser read it from there.
    """
    limit = settings.RENTAHAL_FEDERATION_MAX_ROUTE_BYTES
    django_request = request._request
    declared = int(django_request.META.get("CONTENT_LENGTH") or 0)
    body = b"" if declared > limit else django_request.read(limit + 1)
    if declared > limit or len(body) > limit:
        raise RouteTooLarge(f"The route body is over the {limit}-byte limit (FEDERATION_MAX_ROUTE_BYTES).")
    django_request._body = body


class RouteView(PeerView):
    """Run this query for the peer: the answer streams back as NDJSON lines."""

    def initial(self, request, *args, **kwargs):
        read_route_body(request)
        super().initial(request, *args, **kwargs)

    @extend_schema(
        request=RouteSerializer,
        responses={
            (200, "application/x-ndjson"): RouteLineSerializer,
            400: OpenApiResponse(description="invalid, unknown query type, hop_limit or loop_detected"),
            401: OpenApiResponse(description="bad_signature"),
            413: OpenApiResponse(description="route_too_large: over FEDERATION_MAX_ROUTE_BYTES"),
            429: OpenApiResponse(description="peer_over_limit, with Retry-After"),
        },
    )
    def post(self, request):
        serializer = RouteSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        routed = serving.RoutedQuery(**{**data, "via": tuple(data["via"]), "image": data["image"] or None})
        realm = serving.admit(request.user, routed)
        response = StreamingHttpResponse(serving.stream_route(request.user, routed, realm), content_type="application/x-ndjson")
        response["X-Accel-Buffering"] = "no"
        return response


class SettlementView(PeerView):
    """Our settlement rows with the calling peer since a time, for its reconciliation."""

    @extend_schema(
        parameters=[OpenApiParameter("since", datetime.datetime, required=False)],
        responses={200: SettlementSerializer},
    )
    def get(self, request):
        since = request.query_params.get("since")
        try:
            since = datetime.datetime.fromisoformat(since) if since else None
        except ValueError:
            raise Invalid(fields={"since": ["Give an ISO 8601 time."]}) from None
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=datetime.timezone.utc)
        rows = settlement.rows_with(request.user, since)
        return Response({"federation_id": identity.federation_id(), "rows": [
            {"direction": row.direction, "query_id": row.query_id, "user": row.user, "query_type": row.query_type,
             "service_seconds": row.service_seconds, "amount": str(row.amount), "status": row.status,
             "created_at": row.created_at.isoformat()}
            for row in rows
        ]})


