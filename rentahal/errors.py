"""Refusals with a stable code, rendered in exactly two places: the consumer and DRF."""
import logging

from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class BrokerError(Exception):
    """A refusal the caller should see, with a machine-readable `code`."""

    code = "error"
    http_status = 400

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class NotFound(BrokerError):
    code = "not_found"
    http_status = 404


class Forbidden(BrokerError):
    code = "forbidden"
    http_status = 403


class Unavailable(BrokerError):
    code = "unavailable"
    http_status = 503


def drf_exception_handler(exc, context):
    if isinstance(exc, BrokerError):
        logger.info("refused %s: %s", exc.code, exc.message)
        return Response({"error": exc.message, "code": exc.code}, status=exc.http_status)
    return exception_handler(exc, context)
