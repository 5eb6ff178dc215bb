"""Every write to workers: registration and removal."""
import logging

from django.core.exceptions import ValidationError
from django.db import transaction

from pools.models import Worker

logger = logging.getLogger(__name__)


def add_worker(*, name: str, address: str, query_type: str, wire_format: str = "predict", model: str = "") -> Worker:
    """Register a model server, or update the one of that name; raise ValidationError on bad fields."""
    worker = Worker.objects.filter(name=name).first() or Worker(name=name)
    worker.address = address
    worker.query_type = query_type
    worker.wire_format = wire_format
    worker.model = model
    worker.full_clean(validate_unique=False)
    with transaction.atomic(using="default"):
        worker.save()
    logger.info("worker %s registered at %s (%s, %s)", name, address, query_type, wire_format)
    return worker


def remove_worker(name: str) -> bool:
    deleted, _ = Worker.objects.filter(name=name).delete()
    if deleted:
        logger.info("worker %s removed", name)
    return bool(deleted)


def list_workers() -> list[dict]:
    return [worker.as_frame_data() for worker in Worker.objects.all()]


def count_available_workers(query_type: str) -> int:
    return Worker.objects.filter(query_type=query_type, is_blacklisted=False).count()


def validation_message(error: ValidationError) -> str:
    if hasattr(error, "message_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in error.message_dict.items())
    return " ".join(error.messages)
