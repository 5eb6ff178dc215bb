"""The shard map and the record of shard moves; both live on `default` (README.md, Sharding)."""
from django.db import models


class ShardMapEntry(models.Model):
    """Which shard holds the users whose guid starts with these two hex characters."""

    prefix = models.CharField(primary_key=True, max_length=2)
    shard = models.CharField(max_length=64)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "shard map entries"

    def __str__(self):
        return f"{self.prefix} → {self.shard}"


class ShardMapVersion(models.Model):
    """One row whose token changes whenever an entry switches shard.

    Processes cache the map and compare this token (mirrored in Redis) before trusting it;
    a random token, not a counter, so a map rebuilt from scratch never repeats a version.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    token = models.CharField(max_length=32)

    def __str__(self):
        return self.token


class ShardMove(models.Model):
    """One move of a prefix between shards, and how far it got.

    copying → switched → cleaned, or rolled_back. At most one move per prefix is active
    (copying or switched); `verify_shards` and `move_shard_prefix --resume/--rollback`
    read this row to know what an interrupted move left behind.
    """

    class State(models.TextChoices):
        COPYING = "copying"
        SWITCHED = "switched"
        CLEANED = "cleaned"
        ROLLED_BACK = "rolled_back"

    ACTIVE = (State.COPYING, State.SWITCHED)

    prefix = models.CharField(max_length=2)
    source = models.CharField(max_length=64)
    target = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.COPYING)
    # Per moved model (by label), the source's last change number when the bulk copy began:
    # the switch copies only rows stamped after it (rentahal.change_numbers).
    watermarks = models.JSONField(default=dict)
    started_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["prefix"], condition=models.Q(state__in=["copying", "switched"]), name="one_active_move_per_prefix"
            )
        ]

    def __str__(self):
        return f"{self.prefix} {self.source} → {self.target} ({self.state})"
