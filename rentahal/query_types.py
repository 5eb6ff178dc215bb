"""The query types every app speaks of (docs/protocol.md §1)."""
from django.db import models


class QueryType(models.TextChoices):
    CHAT = "chat"
    VISION = "vision"
    IMAGINE = "imagine"
    SPEECH = "speech"
