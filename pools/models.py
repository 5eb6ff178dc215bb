"""Model servers (workers), the pool aliases that group them, and their specializations."""
from django.db import models

from rentahal.query_types import QueryType


class WireFormat(models.TextChoices):
    """How to talk to a model server (PROTOCOL.md section 2)."""

    PREDICT = "predict", "Classic RENT-A-HAL /predict"
    A1111 = "a1111", "AUTOMATIC1111 txt2img"
    OLLAMA = "ollama", "Ollama /api/chat"
    OPENAI = "openai", "OpenAI-compatible /v1/chat/completions"


class Worker(models.Model):
    """One model server that rentahal can send queries to."""

    MAX_HEALTH = 100.0

    name = models.CharField(max_length=128, unique=True)
    address = models.CharField(max_length=512, help_text="host:port or a full http(s) URL.")
    query_type = models.CharField("type", max_length=16, choices=QueryType.choices)
    wire_format = models.CharField(max_length=16, choices=WireFormat.choices, default=WireFormat.PREDICT)
    model = models.CharField(
        max_length=256, blank=True, help_text="Model name sent to Ollama/OpenAI-compatible servers."
    )
    api_key = models.CharField(max_length=256, blank=True, help_text="Bearer token, if the server wants one.")
    health_score = models.FloatField(default=MAX_HEALTH)
    is_blacklisted = models.BooleanField(default=False)
    last_active = models.DateTimeField(null=True, blank=True)
    max_concurrency = models.PositiveIntegerField(
        default=0, help_text="Queries this server takes at once; 0 means no limit."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def base_url(self) -> str:
        """Return the address as a URL; classic workers were stored as bare host:port."""
        address = self.address.rstrip("/")
        return address if "://" in address else f"http://{address}"

    def as_frame_data(self) -> dict:
        return {
            "name": self.name,
            "address": self.address,
            "type": self.query_type,
            "wire_format": self.wire_format,
            "health_score": self.health_score,
            "is_blacklisted": self.is_blacklisted,
            "last_active": self.last_active.isoformat() if self.last_active else None,
        }

