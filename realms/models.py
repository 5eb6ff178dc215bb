"""A realm: the service that owns one primary query type, with its own queue."""
from django.core.validators import RegexValidator
from django.db import models

from rentahal.query_types import QueryType

realm_name_validator = RegexValidator(
    r"^\$[A-Z0-9_]+$", "A realm name is $ followed by capital letters, digits or underscores."
)


class Realm(models.Model):
    name = models.CharField(max_length=64, unique=True, validators=[realm_name_validator])
    query_type = models.CharField(
        "primary query type", max_length=16, choices=QueryType.choices, unique=True, null=True, blank=True
    )
    queue_limit = models.PositiveIntegerField(
        default=1000, help_text="Queries waiting in this realm's queue before new ones are refused."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def queue_name(self) -> str:
        """Return the RQ queue name: `$CHAT` becomes `realm.chat` (Redis keys stay plain ASCII)."""
        return "realm." + self.name.lstrip("$").lower()
