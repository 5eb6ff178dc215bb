"""The query types every app speaks of (PROTOCOL.md section 1)."""
from django.db import models


class QueryType(models.TextChoices):
    CHAT = "chat"
    VISION = "vision"
    IMAGINE = "imagine"
    SPEECH = "speech"
