"""Peers (other brokers), the invitations that let them join, this broker's published public
keys, and the settlement record of every query one broker served for another.

Peers, invitations, keys and the serving side's per-peer account (`Settlement`) live on
`default`: they are shared configuration and accounts between brokers. What our own users
asked of peers (`SentSettlement`) lives beside their charges, on their shard."""
from __future__ import annotations

import uuid

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from accounts.models import CHANGE_NUMBER_HELP
from rentahal import outbound
from rentahal.errors import CodedValidationError
from rentahal.query_types import QueryType
from rentahal.sharded_models import Sharded, ShardedQuerySet

FEDERATION_ID_PATTERN = r"^[a-z0-9][a-z0-9.-]{0,62}$"
# The query types a peer can serve for another broker. `route` carries a prompt and an
# image, not a speech query's audio or its task, so speech is never federated: it is not
# advertised, not mirrored into a peer's workers, and not accepted by `route`.
ROUTED_QUERY_TYPES = (QueryType.CHAT, QueryType.VISION, QueryType.IMAGINE)
federation_id_validator = RegexValidator(
    FEDERATION_ID_PATTERN, "A federation id is 1-63 lower-case letters, digits, dots or dashes."
)


def validate_peer_url(url: str) -> None:
    """Refuse a base URL the outbound policy forbids (rentahal.outbound); calls check it again."""
    try:
        outbound.check_url_resolving(url)
    except outbound.ForbiddenAddress as exc:
        raise CodedValidationError(f"Refused address: {exc}.", code="forbidden_address") from None


class SigningKey(models.Model):
    """One of this broker's public keys, as the well-known URL publishes it.

    The private half never enters the database: it comes from the environment or the key
    file (federation.identity). A retired key keeps verifying until `valid_until`.
    """

    key_id = models.CharField(max_length=64, unique=True)
    public_key = models.CharField(max_length=64, help_text="Ed25519 public key, base64 of its 32 raw bytes.")
    valid_from = models.DateTimeField()
    valid_until = models.DateTimeField(null=True, blank=True, help_text="Blank while it is the current key.")

    class Meta:
        ordering = ["-valid_from"]

    def __str__(self):
        return self.key_id


class Peer(models.Model):
    """Another broker: who it is, how to reach and verify it, what it offers, what it may use."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending: waiting for an operator"
        ACTIVE = "active"
        SUSPENDED = "suspended"
        REVOKED = "revoked"

    federation_id = models.CharField(max_length=63, unique=True, validators=[federation_id_validator])
    base_url = models.CharField(max_length=512, validators=[validate_peer_url])
    keys = models.JSONField(
        default=list, blank=True, help_text="Its published public keys: [{key_id, public_key, valid_until}], newest first."
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    introduced_by = models.CharField(
        max_length=63, blank=True, help_text="The peer that told us about it (gossip); blank when an operator added it."
    )
    awaiting_their_approval = models.BooleanField(
        default=False, help_text="We asked to join it; it becomes active when it first advertises to us, signed."
    )
    advertised = models.JSONField(
        default=dict,
        blank=True,
        help_text="What it serves now: query_types, aliases, capacity, price_per_query, price_per_second.",
    )
    last_seen = models.DateTimeField(null=True, blank=True)
    queries_per_minute = models.PositiveIntegerField(default=60)
    max_in_flight = models.PositiveIntegerField(default=8)
    spend_limit = models.DecimalField(
        max_digits=14, decimal_places=6, default=10, validators=[MinValueValidator(0)],
        help_text="Most it may spend with us per spend period.",
    )
    spend_period_seconds = models.PositiveIntegerField(default=86400)
    sent = models.PositiveBigIntegerField(default=0, help_text="Queries we sent it.")
    received = models.PositiveBigIntegerField(default=0, help_text="Queries it sent us.")
    failed = models.PositiveBigIntegerField(default=0, help_text="Queries we sent it that it did not answer.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["federation_id"]

    def __str__(self):
        return self.federation_id

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class Invitation(models.Model):
    """A single-use token an operator hands to another broker's operator; only its hash is kept."""

    token_hash = models.CharField(max_length=64, unique=True)
    note = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField()
    used_by = models.ForeignKey(Peer, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"invitation {self.pk} ({'used' if self.used_at else 'open'})"


class Settlement(models.Model):
    """One query we served for a peer: the peer's account, on `default`.

    `sent` rows are those recorded here before the requesting side's record moved to the
    user's shard (`SentSettlement`); the settlement commands still count them."""

    class Direction(models.TextChoices):
        SENT = "sent", "We asked the peer"
        SERVED = "served", "We served the peer"

    class Status(models.TextChoices):
        DONE = "done"
        FAILED = "failed"

    peer = models.ForeignKey(Peer, on_delete=models.PROTECT, related_name="settlements")
    direction = models.CharField(max_length=8, choices=Direction.choices)
    query_id = models.CharField(max_length=64, help_text="The requesting broker's query id.")
    user = models.CharField(max_length=64, help_text="The per-peer pseudonym of the user; never the guid.")
    query_type = models.CharField(max_length=16)
    service_seconds = models.FloatField(default=0.0)
    price_per_query = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    price_per_second = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    amount = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    status = models.CharField(max_length=8, choices=Status.choices)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["peer", "direction", "query_id"], name="one_settlement_per_query_and_side")
        ]

    def __str__(self):
        return f"{self.direction} {self.query_id} ({self.peer})"


class SentSettlement(models.Model):
    """One query of ours a peer served (or failed), on the shard of the user who asked,
    beside the charge it paid: what the peer will bill, to reconcile against its `served` row.

    The peer is named by its federation id, not a foreign key: `Peer` lives on `default`.
    `user` is the pseudonym the peer saw; `user_guid` (the shard key) never leaves.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    peer = models.CharField(max_length=63, help_text="The serving peer's federation id.")
    query_id = models.CharField(max_length=64, help_text="Our query id.")
    user_guid = models.CharField(max_length=64, help_text="The user who asked (a pseudonym if we only forwarded it).")
    user = models.CharField(max_length=64, help_text="The per-peer pseudonym the peer saw.")
    query_type = models.CharField(max_length=16)
    service_seconds = models.FloatField(default=0.0)
    price_per_query = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    price_per_second = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    amount = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    status = models.CharField(max_length=8, choices=Settlement.Status.choices)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    change_number = models.BigIntegerField(default=0, editable=False, help_text=CHANGE_NUMBER_HELP)

    direction = Settlement.Direction.SENT

    objects = ShardedQuerySet.as_manager()
    # Uuid keys name a row on every shard; a row is written once, when the peer answers.
    sharding = Sharded(key="user_guid", lookups=("user_guid",), append_only=True, changes="change_number")

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["peer", "query_id"], name="one_sent_settlement_per_peer_and_query")]
        indexes = [models.Index(fields=["user_guid", "-created_at"])]

    def __str__(self):
        return f"sent {self.query_id} ({self.peer})"
