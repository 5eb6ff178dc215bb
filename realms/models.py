"""Realms: the service that owns one primary query type, its queue, its backups, and the
scaling advice recorded for it."""
from collections import defaultdict

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from pools.models import realm_name_validator
from rentahal.query_types import QueryType


def default_queue_limit() -> int:
    """Return the queue limit a new realm starts with: QUEUE_LIMIT in the environment."""
    return settings.RENTAHAL_QUEUE_LIMIT


class Realm(models.Model):
    """A realm; `query_type` is the type it is primary for (null: a backup-only realm)."""

    name = models.CharField(max_length=64, unique=True, validators=[realm_name_validator])
    query_type = models.CharField(
        "primary query type", max_length=16, choices=QueryType.choices, unique=True, null=True, blank=True
    )
    min_workers = models.PositiveIntegerField(default=1, help_text="Scaling advice never goes below this.")
    max_workers = models.PositiveIntegerField(default=10, help_text="Scaling advice never goes above this.")
    queue_limit = models.PositiveIntegerField(
        default=default_queue_limit, help_text="Queries waiting in this realm's queue before new ones are refused."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(min_workers__lte=models.F("max_workers")),
                name="realm_min_workers_at_most_max",
                violation_error_message="min_workers must not exceed max_workers.",
            )
        ]

    def __str__(self):
        return self.name

    def clean(self):
        """Keep every query type routed: a new realm names its type; a primary realm keeps its own."""
        if self.pk is None and not self.query_type:
            raise ValidationError({"query_type": "A realm needs a primary query type."})
        stored = Realm.objects.filter(pk=self.pk).values_list("query_type", flat=True).first() if self.pk else None
        if stored and stored != self.query_type:
            raise ValidationError(
                {
                    "query_type": f"{self.name} is the primary realm for {stored}; changing that would leave {stored} "
                    f"queries with no realm. Make another realm primary for {stored} first."
                }
            )

    @property
    def slug(self) -> str:
        """Return the name as plain ASCII for Redis keys and channel groups: `$CHAT` → `chat`."""
        return self.name.lstrip("$").lower()

    @property
    def queue_name(self) -> str:
        """Return the RQ queue name: `$CHAT` becomes `realm.chat`."""
        return "realm." + self.slug

    @property
    def group_name(self) -> str:
        """Return the channel-layer group of the realm's live connections."""
        return "realm." + self.slug


class RealmBackup(models.Model):
    """One step of a realm's ordered backups for a query type: when `realm` is full, try `backup`."""

    realm = models.ForeignKey(Realm, on_delete=models.CASCADE, related_name="backups")
    query_type = models.CharField(max_length=16, choices=QueryType.choices)
    backup = models.ForeignKey(Realm, on_delete=models.CASCADE, related_name="backing")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["realm__name", "query_type", "position"]
        constraints = [
            models.UniqueConstraint(fields=["realm", "query_type", "backup"], name="backup_once_per_realm_and_type"),
            models.CheckConstraint(
                condition=~models.Q(realm=models.F("backup")),
                name="realm_is_not_its_own_backup",
                violation_error_message="A realm cannot be its own backup.",
            ),
        ]

    def __str__(self):
        return f"{self.realm} → {self.backup} ({self.query_type})"

    def clean(self):
        if self.realm_id is None or self.backup_id is None:
            return
        loop = find_backup_loop(self.realm, self.query_type, [self.backup], exclude=self.pk)
        if loop:
            raise ValidationError({"backup": f"Backup chain loops: {' → '.join(loop)}."})


class ScalingAdvice(models.Model):
    """One periodic evaluation of a realm: scale up, down, or hold, and why."""

    class Action(models.TextChoices):
        UP = "up"
        DOWN = "down"
        HOLD = "hold"

    realm = models.ForeignKey(Realm, on_delete=models.CASCADE, related_name="scaling_advice")
    action = models.CharField(max_length=8, choices=Action.choices)
    reason = models.CharField(max_length=255)
    workers = models.PositiveIntegerField()
    utilisation = models.FloatField()
    error_rate = models.FloatField()
    queries = models.PositiveIntegerField(help_text="Queries in the evaluated window.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "scaling advice"

    def __str__(self):
        return f"{self.realm}: {self.action} ({self.reason})"

    def as_data(self) -> dict:
        return {
            "realm": self.realm.name,
            "action": self.action,
            "reason": self.reason,
            "workers": self.workers,
            "utilisation": self.utilisation,
            "error_rate": self.error_rate,
            "queries": self.queries,
            "created_at": self.created_at.isoformat(),
        }


# -- the backup rule RealmBackup.clean enforces ---------------------------------------------

def backup_edges(query_type: str, *, exclude_realm: Realm | None = None, exclude_pk=None) -> dict[int, list[Realm]]:
    """Return each realm's ordered backups for the query type, as realm id → backups."""
    rows = RealmBackup.objects.filter(query_type=query_type).select_related("backup").order_by("position", "id")
    if exclude_realm is not None:
        rows = rows.exclude(realm=exclude_realm)
    if exclude_pk is not None:
        rows = rows.exclude(pk=exclude_pk)
    edges: dict[int, list[Realm]] = defaultdict(list)
    for row in rows:
        edges[row.realm_id].append(row.backup)
    return edges


def find_backup_loop(realm: Realm, query_type: str, backups: list[Realm], *, replace: bool = False, exclude=None) -> list[str]:
    """Return the realm names of a loop that giving `realm` these backups would make, else [].

    With `replace`, the backups replace the realm's current ones for the type; otherwise
    they are added (one new row, as the admin saves them).
    """
    edges = backup_edges(query_type, exclude_realm=realm if replace else None, exclude_pk=exclude)
    edges[realm.pk] = [*edges.get(realm.pk, []), *backups]
    names = {realm.pk: realm.name}
    for targets in edges.values():
        names.update((target.pk, target.name) for target in targets)

    def walk(current_id: int, path: list[int]) -> list[int]:
        for target in edges.get(current_id, []):
            if target.pk == realm.pk:
                return [*path, target.pk]
            if target.pk not in path:
                found = walk(target.pk, [*path, target.pk])
                if found:
                    return found
        return []

    loop = walk(realm.pk, [realm.pk])
    return [names[pk] for pk in loop]
