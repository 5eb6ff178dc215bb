"""Model servers (workers), the pool aliases that group them, their specializations, and the
per-attempt outcomes that A/B reports are drawn from."""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from pools import providers
from rentahal import outbound
from rentahal.errors import CodedValidationError
from rentahal.query_types import QueryType

if TYPE_CHECKING:
    from pools.state import Health

ALIAS_PATTERN = r"^\$[A-Z0-9_]+$"

alias_name_validator = RegexValidator(
    ALIAS_PATTERN, "A pool alias is $ followed by capital letters, digits or underscores, e.g. $CHAT."
)
# Realms are named like aliases. This is the rule's one home: realms imports it (pools imports no other app).
realm_name_validator = RegexValidator(
    ALIAS_PATTERN, "A realm name is $ followed by capital letters, digits or underscores, e.g. $CHAT."
)


def worker_url(address: str) -> str:
    """Return a worker's address as a URL; classic workers were stored as bare host:port."""
    address = address.rstrip("/")
    return address if "://" in address else f"http://{address}"


def validate_worker_address(address: str) -> None:
    """Refuse an address the outbound policy forbids (rentahal.outbound), resolving its host
    now; calls check it again when they connect."""
    try:
        outbound.check_url_resolving(worker_url(address))
    except outbound.ForbiddenAddress as exc:
        raise CodedValidationError(f"Refused address: {exc}.", code="forbidden_address") from None


class WireFormat(models.TextChoices):
    """How to talk to a model server (docs/protocol.md §2)."""

    PREDICT = "predict", "Classic RENT-A-HAL /predict"
    A1111 = "a1111", "AUTOMATIC1111 txt2img"
    OLLAMA = "ollama", "Ollama /api/chat"
    OPENAI = "openai", "OpenAI-compatible /v1/chat/completions"
    ANTHROPIC = "anthropic", "Anthropic Messages API /v1/messages"
    HUGGINGFACE = "huggingface", "Hugging Face text-generation-inference"
    OPENAI_AUDIO = "openai_audio", "OpenAI-compatible /v1/audio (transcriptions, speech)"
    # Another rentahal broker, reached by signed calls to its /api/federation/route. Its client
    # is registered by the federation app (pools imports no other app): pools.clients.register_client.
    PEER = "peer", "Peer broker (federation)"


PEER_WORKER_PREFIX = "peer:"


def peer_worker_name(federation_id: str, query_type: str) -> str:
    """Return the name of the worker that stands for a peer broker's service of one type."""
    return f"{PEER_WORKER_PREFIX}{federation_id}:{query_type}"


def broker_of_worker(name: str) -> str:
    """Return the federation id of the peer broker a worker name stands for, "" for a model server."""
    if not name.startswith(PEER_WORKER_PREFIX):
        return ""
    return name[len(PEER_WORKER_PREFIX):].rpartition(":")[0]


class Strategy(models.TextChoices):
    """How a pool picks among its available members (pools.selection)."""

    AUTO = "auto", "Auto: pick a strategy from the pool's health"
    HEALTH = "health", "Highest health score"
    ROUND_ROBIN = "round_robin", "Round robin"
    LEAST_BUSY = "least_busy", "Fewest queries in flight"
    RANDOM = "random", "Random"
    AFFINITY = "affinity", "Keep a conversation on one member"
    LATENCY = "latency", "Lowest recent latency"
    WEIGHTED = "weighted", "Random by member weight"


class Worker(models.Model):
    """One model server that rentahal can send queries to: its configuration.

    Its runtime health (score, the health rules' blacklist, when it last answered a probe)
    lives in Redis with its cooldowns (pools.state), so probes and outcomes never write here.
    """

    name = models.CharField(max_length=128, unique=True)
    address = models.CharField(
        max_length=512, validators=[validate_worker_address], help_text="host:port or a full http(s) URL."
    )
    query_type = models.CharField("type", max_length=16, choices=QueryType.choices)
    wire_format = models.CharField(max_length=16, choices=WireFormat.choices, default=WireFormat.PREDICT)
    model = models.CharField(
        max_length=256, blank=True, help_text="Model name sent to Ollama, OpenAI-compatible and Anthropic servers (Anthropic needs one)."
    )
    api_key = models.CharField(
        max_length=256,
        blank=True,
        help_text=(
            "The server's or provider's key, if it wants one; stored, never shown. A blank key of an "
            "anthropic or huggingface worker is taken from ANTHROPIC_API_KEY or HF_TOKEN."
        ),
    )
    realm = models.CharField(
        max_length=64,
        blank=True,
        validators=[realm_name_validator],
        help_text="The realm this server belongs to, e.g. $CHAT; blank means any realm.",
    )
    is_blacklisted = models.BooleanField(
        "blacklisted by an operator",
        default=False,
        help_text="Keep this server out of selection until an operator clears this; health checks never change it.",
    )
    max_concurrency = models.PositiveIntegerField(
        default=0, help_text="Queries this server takes at once; 0 means no limit."
    )
    price = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=0,
        help_text="What one query costs here: a peer broker's advertised price per query; among peers the cheaper is tried first.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    def clean(self):
        """Refuse a hosted provider's worker that could never be called: Anthropic wants a
        model name, and both providers a key (the worker's own or the environment's)."""
        errors = {}
        if self.wire_format == WireFormat.ANTHROPIC and not self.model:
            errors["model"] = "An anthropic worker needs the model to ask for, e.g. claude-sonnet-4-5."
        if self.wire_format in providers.KEY_VARIABLES and not providers.provider_key(self.wire_format, self.api_key):
            errors["api_key"] = CodedValidationError(
                providers.missing_key_message(self.wire_format), code="missing_provider_key"
            )
        if errors:
            raise ValidationError(errors)

    @property
    def base_url(self) -> str:
        """Return the address as a URL; classic workers were stored as bare host:port."""
        return worker_url(self.address)

    @property
    def is_remote(self) -> bool:
        """Return whether this is another broker rather than a model server."""
        return self.wire_format == WireFormat.PEER

    def as_frame_data(self, health: Health) -> dict:
        """Return the worker as a `worker_update` frame lists it, with its runtime health
        (`pools.status.worker_frames` reads it from Redis for a whole list at once);
        blacklisted means by an operator or by the health rules."""
        return {
            "name": self.name,
            "address": self.address,
            "type": self.query_type,
            "wire_format": self.wire_format,
            "realm": self.realm,
            "health_score": health.score,
            "is_blacklisted": self.is_blacklisted or health.is_blacklisted,
            "last_active": (
                datetime.datetime.fromtimestamp(health.last_active, tz=datetime.timezone.utc).isoformat()
                if health.last_active
                else None
            ),
        }


class Specialization(models.Model):
    """A topic a worker is good at, recognised by keywords in the query's words."""

    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="specializations")
    topic = models.CharField(max_length=64)
    keywords = models.JSONField(default=list, help_text='A list of words, e.g. ["python", "django"].')

    class Meta:
        ordering = ["worker", "topic"]
        constraints = [models.UniqueConstraint(fields=["worker", "topic"], name="one_topic_per_worker")]

    def __str__(self):
        return f"{self.worker}: {self.topic}"

    def clean(self):
        if not isinstance(self.keywords, list) or not self.keywords:
            raise ValidationError({"keywords": "Give a non-empty list of keywords."})
        if not all(isinstance(word, str) and word.strip() for word in self.keywords):
            raise ValidationError({"keywords": "Every keyword must be a non-empty string."})


class PoolAlias(models.Model):
    """A service name such as $CHAT that stands for a set of workers of one type."""

    name = models.CharField(max_length=64, validators=[alias_name_validator])
    realm = models.CharField(
        max_length=64,
        blank=True,
        validators=[realm_name_validator],
        help_text="The realm this pool serves, e.g. $CHAT; blank means any realm.",
    )
    query_type = models.CharField("type", max_length=16, choices=QueryType.choices)
    strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.AUTO)
    members = models.ManyToManyField(Worker, through="PoolMember", related_name="pools")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "realm"]
        verbose_name_plural = "pool aliases"
        constraints = [models.UniqueConstraint(fields=["name", "realm"], name="one_alias_per_realm")]

    def __str__(self):
        return f"{self.name} in {self.realm}" if self.realm else self.name


class PoolMember(models.Model):
    """A worker's seat in a pool; the weight counts for the weighted strategy."""

    pool = models.ForeignKey(PoolAlias, on_delete=models.CASCADE, related_name="memberships")
    worker = models.ForeignKey(Worker, on_delete=models.CASCADE, related_name="memberships")
    weight = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["pool", "worker"]
        constraints = [models.UniqueConstraint(fields=["pool", "worker"], name="one_seat_per_worker")]

    def __str__(self):
        return f"{self.worker} in {self.pool}"

    def clean(self):
        # getattr: in the admin's add view the pool is not saved yet, and an unset relation
        # raises an AttributeError subclass.
        pool, worker = getattr(self, "pool", None), getattr(self, "worker", None)
        if pool is not None and worker is not None and worker.query_type != pool.query_type:
            raise ValidationError(
                {"worker": f"{worker.name} serves {worker.query_type}, but {pool.name} is a {pool.query_type} pool."}
            )


class SelectionOutcome(models.Model):
    """One attempt to serve a query: which pool and member, how it ended, how long it took.

    Queries live in accounts, which pools may not import, so the A/B report reads these rows
    instead. They sit in the default database (not a Redis stream) because the report is an
    aggregate over days that SQL answers directly, and an attempt is rare next to the
    model call it records (one insert per call of seconds). Rows older than
    `OUTCOME_RETENTION_DAYS` are pruned (`pools.actions.prune_outcomes`).
    """

    class Result(models.TextChoices):
        OK = "ok"
        SERVER = "server"
        TIMEOUT = "timeout"
        RATE_LIMITED = "rate_limited"
        AUTH = "auth"
        CLIENT = "client"

    pool = models.CharField(max_length=64, blank=True, db_index=True, help_text="Alias name; blank for a direct worker.")
    pool_realm = models.CharField(max_length=64, blank=True)
    worker = models.CharField(max_length=128, db_index=True)
    strategy = models.CharField(max_length=16, blank=True, help_text="The strategy that chose, after auto resolved.")
    realm = models.CharField(max_length=64, blank=True, help_text="The realm of the query.")
    attempt = models.PositiveSmallIntegerField(default=1)
    result = models.CharField(max_length=16, choices=Result.choices)
    time_to_first_byte = models.FloatField(null=True, blank=True)
    duration = models.FloatField(help_text="Seconds from call to answer or error.")
    detail = models.TextField(
        blank=True, help_text="Why the attempt failed, with the server's own words: for operators, never shown to users."
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["pool", "created_at"])]

    def __str__(self):
        return f"{self.worker} {self.result} ({self.pool or 'direct'})"


class HealthSample(models.Model):
    """One member's health at one moment, taken by every health round, so the A/B comparison
    can draw each alias's health over time. Rows older than `HEALTH_SAMPLE_RETENTION_HOURS`
    are pruned by the same round (`pools.actions.record_health_samples`)."""

    class State(models.TextChoices):
        SERVING = "serving"
        COOLING = "cooling"
        BLACKLISTED = "blacklisted"

    worker = models.CharField(max_length=128)
    score = models.FloatField()
    state = models.CharField(max_length=16, choices=State.choices)
    latency = models.FloatField(null=True, blank=True, help_text="EWMA time to first byte, in seconds.")
    success_rate = models.FloatField(null=True, blank=True)
    in_flight = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        indexes = [models.Index(fields=["worker", "created_at"])]

    def __str__(self):
        return f"{self.worker} {self.score:g} {self.state} at {self.created_at:%H:%M:%S}"
