"""Per-user records: users, their queries and the one charge each successful query earns.

All of these live on the user's shard (see rentahal.sharding); `FoundingUser` lives on
`default` because "the first user of the system" is a fact about the whole system.
"""
import uuid
from decimal import Decimal

from django.db import models

from rentahal.query_types import QueryType
from rentahal.sharded_models import Sharded, ShardedQuerySet

# A shard move's fenced step copies only rows stamped after its bulk copy.
CHANGE_NUMBER_HELP = "Stamped by a database trigger on every insert and update (rentahal.change_numbers)."


class User(models.Model):
    """A broker user, known by the `user_guid` cookie (docs/protocol.md §1)."""

    guid = models.CharField(primary_key=True, max_length=36)
    nickname = models.CharField(max_length=64, unique=True)
    is_sysop = models.BooleanField(default=False)
    is_banned = models.BooleanField(default=False)
    total_query_time = models.FloatField(default=0.0)
    total_cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    query_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    change_number = models.BigIntegerField(default=0, editable=False, help_text=CHANGE_NUMBER_HELP)

    objects = ShardedQuerySet.as_manager()
    sharding = Sharded(key="guid", lookups=("pk", "guid"), changes="change_number")

    def __str__(self):
        return self.nickname

    def as_frame_data(self) -> dict:
        """Return the `user_info` payload of docs/protocol.md §1."""
        return {
            "guid": self.guid,
            "nickname": self.nickname,
            "is_sysop": self.is_sysop,
            "total_query_time": self.total_query_time,
            "total_cost": float(self.total_cost),
            "is_banned": self.is_banned,
            "query_count": self.query_count,
        }


class FoundingUser(models.Model):
    """At most one row: the guid of the first user, who became sysop.

    A unique primary key makes "first" a database fact, so two users arriving together on
    an empty system cannot both become sysop.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    guid = models.CharField(max_length=36)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return self.guid


class SysopClaim(models.Model):
    """A one-time token that makes whoever presents it first a sysop (`manage.py
    sysop_claim_token`, or printed by `run_broker`): a fresh deployment's operator step.

    Only the token's SHA-256 is kept, so the table does not hand out sysop to whoever can
    read it. It lives on `default`, like `FoundingUser`: who may become sysop is a fact
    about the whole system.
    """

    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    claimed_at = models.DateTimeField(null=True, blank=True)
    claimed_by = models.CharField(max_length=36, blank=True, help_text="Guid of the user it made sysop.")

    def __str__(self):
        return f"sysop claim of {self.created_at:%Y-%m-%d %H:%M}"


class Query(models.Model):
    class Status(models.TextChoices):
        ACCEPTED = "accepted"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    class ResultType(models.TextChoices):
        TEXT = "text"
        IMAGE = "image"
        AUDIO = "audio"

    class SpeechTask(models.TextChoices):
        """What a speech query asks for (realms.speech); blank for other types."""

        ANSWER = "answer", "Transcribe, answer as text"
        ANSWER_ALOUD = "answer_aloud", "Transcribe, answer, speak the answer"
        TRANSCRIBE = "transcribe", "Transcribe only (speech_to_text)"
        SPEAK = "speak", "Speak the prompt (text_to_speech)"

    FINISHED = (Status.DONE, Status.FAILED)
    UNFINISHED = (Status.ACCEPTED, Status.RUNNING)

    # The first byte of the id is the user's guid prefix, so the id alone names the shard.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="queries")
    query_type = models.CharField(max_length=16, choices=QueryType.choices)
    model_type = models.CharField(max_length=32, default="worker_node")
    model_name = models.CharField(max_length=128, blank=True)
    realm = models.CharField(max_length=64)
    prompt = models.TextField()
    image = models.TextField(blank=True, help_text="Base64 image sent with a vision query.")
    audio = models.TextField(blank=True, help_text="Base64 audio sent with a speech query.")
    audio_format = models.CharField(max_length=8, blank=True, help_text="The audio's container: wav or webm.")
    speech_task = models.CharField(max_length=16, choices=SpeechTask.choices, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACCEPTED)
    result = models.TextField(blank=True)
    result_type = models.CharField(max_length=8, choices=ResultType.choices, blank=True)
    error = models.TextField(blank=True)
    worker = models.CharField(max_length=128, blank=True, help_text="Name of the worker that served it.")
    attempts = models.PositiveSmallIntegerField(default=0)
    accepted_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    processing_time = models.FloatField(null=True, blank=True)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    change_number = models.BigIntegerField(default=0, editable=False, help_text=CHANGE_NUMBER_HELP)
    idempotency_key = models.CharField(
        max_length=128, blank=True, help_text="The client's id for this submission; a resubmit with it returns this query."
    )
    conversation_id = models.CharField(
        max_length=128, blank=True, help_text="The client's name for the conversation this query belongs to (affinity)."
    )
    # Fair share (accounts.actions.queries.accept_query): an unfinished query holds one of
    # its user's in-flight slots, and while it waits for a worker one of the queued slots.
    # Unique slots per user make the caps hold under concurrent accepts.
    in_flight_slot = models.PositiveSmallIntegerField(null=True, blank=True, editable=False)
    queued_slot = models.PositiveSmallIntegerField(null=True, blank=True, editable=False)
    # What an HTTP door asked beyond the prompt (`realms.doors`): the conversation's messages,
    # max_tokens, temperature, stop, an image size, or the task (`embed`), passed to the
    # model server as `pools.clients.ModelRequest.options`; and `peers_only`, for a query its
    # full realm gave to peer brokers (`realms.lifecycle.accept_query`).
    options = models.JSONField(default=dict, blank=True)
    usage = models.JSONField(
        default=dict, blank=True, help_text="Token counts the model server reported for the answer, if it did."
    )
    api_key = models.BigIntegerField(
        null=True, blank=True, db_index=False, help_text="Id of the API key (accounts.ApiKey) the query came with."
    )

    objects = ShardedQuerySet.as_manager()
    # A move compares what each step of a query's life changes: acceptance, start, finish, charge.
    sharding = Sharded(
        key="user", lookups=("pk", "id", "user", "user_id"), compared=("status", "attempts", "cost"), changes="change_number"
    )

    class Meta:
        verbose_name_plural = "queries"
        indexes = [
            models.Index(fields=["user", "-accepted_at"]),
            models.Index(fields=["status", "accepted_at"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"], condition=~models.Q(idempotency_key=""),
                name="one_query_per_idempotency_key",
            ),
            models.UniqueConstraint(
                fields=["user", "in_flight_slot"], condition=models.Q(status__in=["accepted", "running"]),
                name="one_unfinished_query_per_slot",
            ),
            # A query that was started once no longer waits in the realm's queue, even if a
            # recovery puts it back to `accepted`: it keeps its slot number but not the slot.
            models.UniqueConstraint(
                fields=["user", "queued_slot"], condition=models.Q(status="accepted", started_at__isnull=True),
                name="one_queued_query_per_slot",
            ),
        ]

    def __str__(self):
        return f"{self.query_type} query {self.id}"

    def as_frame_data(self) -> dict:
        """Return one entry of the `previous_queries` frame."""
        return {
            "query_id": str(self.id),
            "prompt": self.prompt,
            "query_type": self.query_type,
            "model_name": self.model_name,
            "status": self.status,
            "result": self.result,
            "result_type": self.result_type,
            "error": self.error,
            "processing_time": self.processing_time,
            "cost": float(self.cost),
            "worker": self.worker,
            "timestamp": self.accepted_at.isoformat() if self.accepted_at else None,
        }


class Charge(models.Model):
    """The ledger: one row per successful query, never two (a constraint, not a habit)."""

    query = models.ForeignKey(Query, on_delete=models.PROTECT, related_name="charges")
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="charges")
    amount = models.DecimalField(max_digits=12, decimal_places=6)
    processing_time = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)
    change_number = models.BigIntegerField(default=0, editable=False, help_text=CHANGE_NUMBER_HELP)

    objects = ShardedQuerySet.as_manager()
    # Ids are per database, so a charge is known on every shard by its (unique) query.
    sharding = Sharded(
        key="user", lookups=("user", "user_id", "query", "query_id"), identity="query", append_only=True,
        changes="change_number",
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["query"], name="one_charge_per_query")]

    def __str__(self):
        return f"{self.amount} for {self.query_id}"


class SystemTotals(models.Model):
    """The system-wide aggregate, one row per shard so a charge updates it atomically.

    The system's figure is the sum over shards (`accounts.billing.system_totals`), so a
    move of users between shards leaves these rows where they are.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    total_queries = models.PositiveBigIntegerField(default=0)
    total_processing_time = models.FloatField(default=0.0)
    total_cost = models.DecimalField(max_digits=16, decimal_places=6, default=Decimal("0"))
    failed_queries = models.PositiveBigIntegerField(default=0)

    sharding = Sharded(key=None)

    class Meta:
        verbose_name_plural = "system totals"

    def __str__(self):
        return f"{self.total_queries} queries"


class ApiKey(models.Model):
    """A user's key for the HTTP doors (`rh-...`): everything it does is billed and listed
    as that user's. Only a SHA-256 of the secret is kept (the secret is random, so a slow
    hash adds nothing), and the secret is shown once, when the key is made.

    Keys live on `default`, not on the user's shard: a request names its key, not its user,
    so the key must be found before the user's shard is known. Its limits are enforced in
    Redis (`accounts.limits`); 0 or blank means no limit.
    """

    user_guid = models.CharField(max_length=36, db_index=True)
    name = models.CharField(max_length=64, blank=True)
    prefix = models.CharField(max_length=16, help_text="The secret's first characters, to tell keys apart.")
    hashed = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    requests_per_minute = models.PositiveIntegerField(default=0, help_text="Requests in any 60 seconds; 0: no limit.")
    max_in_flight = models.PositiveIntegerField(default=0, help_text="Requests unanswered at once; 0: no limit.")
    allowed_models = models.JSONField(
        default=list, blank=True, help_text='Aliases, workers or model names it may use, e.g. ["$CHAT"]; empty: all.'
    )
    daily_budget = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="Spend per UTC day; blank: no limit."
    )
    total_budget = models.DecimalField(
        max_digits=14, decimal_places=6, null=True, blank=True, help_text="Spend over the key's life; blank: no limit."
    )

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({self.name or 'unnamed'})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def may_use(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models

    def as_frame_data(self) -> dict:
        """Return the key as `api_keys` lists it: never its secret."""
        return {
            "id": self.pk,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "requests_per_minute": self.requests_per_minute,
            "max_in_flight": self.max_in_flight,
            "allowed_models": list(self.allowed_models),
            "daily_budget": float(self.daily_budget) if self.daily_budget is not None else None,
            "total_budget": float(self.total_budget) if self.total_budget is not None else None,
        }
