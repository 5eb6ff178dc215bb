"""Every write to federation: invitations, joins, approvals, suspensions and revocations,
advertisements, peers learned by gossip, signing keys, and settlement rows.

Each takes the actor keyword-only (`rentahal.actors`; None for the system and for a peer's
signed call) and commits in one durable transaction on `default` (a `sent` settlement row:
on its user's shard). A peer's service is
mirrored into `pools` as one worker per advertised query type (wire format `peer`), written
through `pools.actions` after the peer's own commit. Refusals are `BrokerError`s with codes.
"""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import hashlib
import hmac
import logging
import secrets

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from federation import identity
from federation.models import ROUTED_QUERY_TYPES, Invitation, Peer, SentSettlement, Settlement, SigningKey
from pools import actions as pool_actions
from pools.models import Worker, WireFormat, peer_worker_name
from rentahal.actors import describe_actor
from rentahal.errors import BrokerError, Forbidden, Invalid, NotFound, TooManyQueries
from rentahal.sharding import shard_for_guid

logger = logging.getLogger(__name__)


class UnknownPeer(NotFound):
    code = "unknown_peer"


class PeerRevoked(Forbidden):
    code = "peer_revoked"


class PeerExists(BrokerError):
    code = "peer_exists"
    http_status = 409


class HopLimit(BrokerError):
    """A routed query that crossed as many brokers as it may, or came back to one it passed."""

    code = "hop_limit"
    http_status = 400


class PeerOverLimit(TooManyQueries):
    """A peer over the rate, in-flight or spend limit it was granted; 429 with Retry-After."""

    code = "peer_over_limit"


class TooManyJoins(TooManyQueries):
    """An address that asked to join too often this hour; 429 with Retry-After."""

    code = "too_many_joins"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_invitation(*, note: str = "", hours: float | None = None, acting_user) -> tuple[Invitation, str]:
    """Create a single-use invitation; return it and its token (shown once, only its hash is kept)."""
    # Hex: a token an operator passes to `federation_join` must not start with a dash,
    # which argparse takes for an option (token_urlsafe's alphabet has one).
    token = secrets.token_hex(24)
    hours = settings.RENTAHAL_FEDERATION_INVITATION_HOURS if hours is None else hours
    with transaction.atomic(using="default", durable=True):
        invitation = Invitation.objects.create(
            token_hash=hash_token(token), note=note, expires_at=timezone.now() + datetime.timedelta(hours=hours)
        )
    logger.info("federation invitation %s created by %s", invitation.pk, describe_actor(acting_user))
    return invitation, token


def validate_peer_fields(peer: Peer) -> None:
    try:
        peer.full_clean(validate_unique=False)
    except ValidationError as exc:
        raise Invalid.from_django(exc) from None


def usable_invitation(token: str) -> Invitation | None:
    """Return the open, unexpired invitation of the token, locked; None if there is none."""
    if not token:
        return None
    invitation = Invitation.objects.select_for_update().filter(token_hash=hash_token(token)).first()
    if invitation is None or invitation.used_at is not None or invitation.expires_at <= timezone.now():
        return None
    # The row was found by the hash; comparing again in constant time costs nothing.
    return invitation if hmac.compare_digest(invitation.token_hash, hash_token(token)) else None


def record_join(*, federation_id: str, base_url: str, keys: list[dict], token: str, acting_user=None) -> Peer:
    """Take a broker's request to join: active with a valid invitation (used up here), else
    pending until an operator approves it. A known peer is refused, a revoked one for good."""
    if federation_id == identity.federation_id():
        raise Invalid("A broker cannot join itself.", code="peer_is_self")
    peer = Peer(federation_id=federation_id, base_url=base_url.rstrip("/"), keys=keys)
    validate_peer_fields(peer)
    with transaction.atomic(using="default", durable=True):
        known = Peer.objects.select_for_update().filter(federation_id=federation_id).first()
        if known is not None and known.status == Peer.Status.REVOKED:
            raise PeerRevoked(f"{federation_id} was revoked here.")
        invitation = usable_invitation(token)
        if known is not None and invitation is None:
            raise PeerExists(f"{federation_id} is already known here; ask for an invitation.")
        if known is not None:
            known.base_url, known.keys = peer.base_url, keys
            peer = known
        peer.status = Peer.Status.ACTIVE if invitation is not None else Peer.Status.PENDING
        peer.introduced_by = ""
        apply_default_limits(peer)
        peer.save()
        if invitation is not None:
            invitation.used_by, invitation.used_at = peer, timezone.now()
            invitation.save(update_fields=["used_by", "used_at"])
    logger.info("%s joined as %s (%s)", federation_id, peer.status, "invited" if invitation else "no invitation")
    return peer


def apply_default_limits(peer: Peer) -> None:
    if peer.pk is None:
        peer.queries_per_minute = settings.RENTAHAL_FEDERATION_PEER_QUERIES_PER_MINUTE
        peer.max_in_flight = settings.RENTAHAL_FEDERATION_PEER_IN_FLIGHT
        peer.spend_limit = decimal.Decimal(str(settings.RENTAHAL_FEDERATION_PEER_SPEND))
        peer.spend_period_seconds = settings.RENTAHAL_FEDERATION_SPEND_PERIOD


def record_joined(*, document: dict, accepted: bool, acting_user) -> Peer:
    """Record the broker we joined (its well-known document): active when it accepted our
    invitation, else pending and awaiting its approval (its first signed advertisement)."""
    federation_id = document.get("federation_id", "")
    peer = Peer.objects.filter(federation_id=federation_id).first() or Peer(federation_id=federation_id)
    peer.base_url = str(document.get("base_url", "")).rstrip("/")
    peer.keys = document.get("keys") or []
    peer.status = Peer.Status.ACTIVE if accepted else Peer.Status.PENDING
    peer.awaiting_their_approval = not accepted
    apply_default_limits(peer)
    validate_peer_fields(peer)
    with transaction.atomic(using="default", durable=True):
        peer.save()
    logger.info("joined %s (%s) by %s", federation_id, peer.status, describe_actor(acting_user))
    return peer


def set_peer_status(peer: Peer, status: str, *, acting_user) -> Peer:
    """Approve (active), suspend or revoke a peer. It takes effect on its next request: every
    signed call reads the peer's status. A revoked peer's workers leave every pool."""
    with transaction.atomic(using="default", durable=True):
        locked = Peer.objects.select_for_update().get(pk=peer.pk)
        if locked.status == Peer.Status.REVOKED and status != Peer.Status.REVOKED:
            raise PeerRevoked(f"{locked.federation_id} was revoked; it may join again with a new invitation.")
        locked.status = status
        locked.awaiting_their_approval = False
        locked.save(update_fields=["status", "awaiting_their_approval"])
    logger.info("peer %s set %s by %s", locked.federation_id, status, describe_actor(acting_user))
    sync_peer_workers(locked, acting_user=acting_user)
    return locked


def save_peer_limits(peer: Peer, *, acting_user) -> Peer:
    """Save the limits granted to a peer (rate, in flight, spend and its period)."""
    validate_peer_fields(peer)
    fields = ["queries_per_minute", "max_in_flight", "spend_limit", "spend_period_seconds"]
    with transaction.atomic(using="default", durable=True):
        Peer.objects.filter(pk=peer.pk).update(**{field: getattr(peer, field) for field in fields})
    logger.info("limits of peer %s set by %s", peer.federation_id, describe_actor(acting_user))
    return peer


def approve_peer(peer: Peer, *, acting_user) -> Peer:
    return set_peer_status(peer, Peer.Status.ACTIVE, acting_user=acting_user)


def suspend_peer(peer: Peer, *, acting_user) -> Peer:
    return set_peer_status(peer, Peer.Status.SUSPENDED, acting_user=acting_user)


def revoke_peer(peer: Peer, *, acting_user) -> Peer:
    return set_peer_status(peer, Peer.Status.REVOKED, acting_user=acting_user)


@dataclasses.dataclass(frozen=True)
class Advertisement:
    query_types: list[str]
    aliases: list[str]
    capacity: int
    price_per_query: decimal.Decimal
    price_per_second: decimal.Decimal

    def as_data(self) -> dict:
        return {
            "query_types": self.query_types,
            "aliases": self.aliases,
            "capacity": self.capacity,
            "price_per_query": str(self.price_per_query),
            "price_per_second": str(self.price_per_second),
        }


def record_advertisement(peer: Peer, advertisement: Advertisement, *, acting_user=None) -> Peer:
    """Store what a peer serves now; a peer we asked to join becomes active with its first
    signed advertisement (it approved us). Its workers follow what it advertised."""
    with transaction.atomic(using="default", durable=True):
        locked = Peer.objects.select_for_update().get(pk=peer.pk)
        locked.advertised = advertisement.as_data()
        locked.last_seen = timezone.now()
        fields = ["advertised", "last_seen"]
        if locked.status == Peer.Status.PENDING and locked.awaiting_their_approval:
            locked.status, locked.awaiting_their_approval = Peer.Status.ACTIVE, False
            fields += ["status", "awaiting_their_approval"]
        locked.save(update_fields=fields)
    sync_peer_workers(locked, acting_user=acting_user)
    return locked


def update_peer_keys(peer: Peer, keys: list[dict]) -> Peer:
    """Store the keys a peer now publishes (after its rotation)."""
    with transaction.atomic(using="default", durable=True):
        Peer.objects.filter(pk=peer.pk).update(keys=keys)
    peer.keys = keys
    return peer


def sync_peer_workers(peer: Peer, *, acting_user=None) -> None:
    """Mirror the peer's service into pools: one worker per advertised query type, kept out
    of selection (blacklisted) while the peer is not active or no longer advertises the
    type, and removed with its pool seats when the peer is revoked. A type no route can
    carry (speech) gets no worker, whatever the peer says."""
    advertised = peer.advertised or {}
    types = set(advertised.get("query_types") or []) & set(ROUTED_QUERY_TYPES)
    mirrored = {worker.query_type: worker for worker in Worker.objects.filter(wire_format=WireFormat.PEER, model=peer.federation_id)}
    if peer.status == Peer.Status.REVOKED:
        for worker in mirrored.values():
            pool_actions.remove_worker(worker.name, acting_user=acting_user)
        return
    for query_type in types | set(mirrored):
        worker = mirrored.get(query_type) or Worker(name=peer_worker_name(peer.federation_id, query_type))
        worker.address = peer.base_url
        worker.query_type = query_type
        worker.wire_format = WireFormat.PEER
        worker.model = peer.federation_id
        worker.max_concurrency = int(advertised.get("capacity") or 0)
        worker.price = decimal.Decimal(str(advertised.get("price_per_query") or 0))
        worker.is_blacklisted = not (peer.is_active and query_type in types)
        pool_actions.save_worker(worker, acting_user=acting_user)


def learn_peers(introducer: Peer, peers: list[dict], *, acting_user=None) -> list[Peer]:
    """Add brokers a peer told us about as pending, noting who introduced them; never trust
    them automatically. Known brokers, ourselves and refused addresses are skipped."""
    learned = []
    for entry in peers:
        federation_id = str(entry.get("federation_id", ""))
        if federation_id in ("", identity.federation_id()) or Peer.objects.filter(federation_id=federation_id).exists():
            continue
        peer = Peer(
            federation_id=federation_id,
            base_url=str(entry.get("base_url", "")).rstrip("/"),
            keys=entry.get("keys") or [],
            status=Peer.Status.PENDING,
            introduced_by=introducer.federation_id,
        )
        apply_default_limits(peer)
        try:
            validate_peer_fields(peer)
        except Invalid as exc:
            logger.warning("%s introduced %s, refused: %s", introducer.federation_id, federation_id, exc.message)
            continue
        with transaction.atomic(using="default", durable=True):
            peer.save()
        logger.info("learned of %s from %s (pending)", federation_id, introducer.federation_id)
        learned.append(peer)
    return learned


def record_retired_key(public_key: str, *, valid_until: datetime.datetime, acting_user) -> SigningKey:
    """Publish a key that no longer signs until `valid_until`, so peers keep verifying it."""
    with transaction.atomic(using="default", durable=True):
        row, _ = SigningKey.objects.update_or_create(
            key_id=identity.key_id_of(public_key),
            defaults={"public_key": public_key, "valid_from": timezone.now(), "valid_until": valid_until},
        )
    logger.info("federation key %s retired until %s by %s", row.key_id, valid_until, describe_actor(acting_user))
    return row


def price_of(service_seconds: float, price_per_query: decimal.Decimal, price_per_second: decimal.Decimal) -> decimal.Decimal:
    amount = price_per_query + decimal.Decimal(str(round(service_seconds, 6))) * price_per_second
    return amount.quantize(decimal.Decimal("0.000001"))


def record_settlement(
    peer: Peer,
    *,
    direction: str,
    query_id: str,
    user: str,
    query_type: str,
    service_seconds: float,
    price_per_query: decimal.Decimal,
    price_per_second: decimal.Decimal,
    status: str,
    user_guid: str = "",
) -> Settlement | SentSettlement:
    """Record one federated query on this side, once (a rerun finds the row), and count it
    on the peer; a failed one costs nothing.

    A `served` row is the peer's account, on `default`. A `sent` row is our user's, on the
    shard of `user_guid` beside their charge, so the two commit apart: the peer's counters
    are advisory and a rerun finds the row and counts nothing twice.
    """
    amount = price_of(service_seconds, price_per_query, price_per_second) if status == Settlement.Status.DONE else 0
    recorded = dict(
        user=user,
        query_type=query_type,
        service_seconds=round(service_seconds, 6),
        price_per_query=price_per_query,
        price_per_second=price_per_second,
        amount=amount,
        status=status,
    )
    if direction == Settlement.Direction.SENT:
        alias = shard_for_guid(user_guid)
        with transaction.atomic(using=alias, durable=True):
            row, created = SentSettlement.objects.using(alias).get_or_create(
                peer=peer.federation_id, query_id=query_id, defaults=dict(user_guid=user_guid, **recorded)
            )
    else:
        with transaction.atomic(using="default", durable=True):
            row, created = Settlement.objects.get_or_create(
                peer=peer, direction=direction, query_id=query_id, defaults=recorded
            )
    if created:
        counter = "received" if direction == Settlement.Direction.SERVED else "sent"
        changes = {counter: F(counter) + 1}
        if direction == Settlement.Direction.SENT and status == Settlement.Status.FAILED:
            changes["failed"] = F("failed") + 1
        with transaction.atomic(using="default", durable=True):
            Peer.objects.filter(pk=peer.pk).update(last_seen=timezone.now(), **changes)
    return row


def find_peer(federation_id: str) -> Peer:
    peer = Peer.objects.filter(federation_id=federation_id).first()
    if peer is None:
        raise UnknownPeer(f"No peer named {federation_id[:63]!r}.")
    return peer
