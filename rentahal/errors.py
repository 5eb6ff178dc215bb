"""Refusals with a stable code, rendered in exactly two places: `error_frame` for the /ws
consumer and `drf_exception_handler` for the APIs (and, for a store outage met by any HTTP
request, `StoreOutageMiddleware` in the same shape).

A refusal is a `BrokerError` (or a subclass) with a `code` a program can branch on, an HTTP
status and a message a person can read; `Invalid` adds the fields at fault. DRF's own errors
(a serializer's ValidationError, NotAuthenticated, PermissionDenied, NotFound, ParseError,
...) are turned into the same shape, so every API answers a refusal with

    {"error": {"code": "invalid", "message": "query_type: ...", "fields": {"query_type": ["..."]}}}

(`fields` only when fields are at fault), and the socket with

    {"type": "error", "code": "invalid", "message": "query_type: ...", "fields": {...}}

The same refusal has the same code through every door: a serializer's ValidationError and a
model's `full_clean` are both `invalid`, DRF's permission_denied is `forbidden`, a body or
frame that does not parse is `malformed`.
"""
import logging

import redis
from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError, close_old_connections
from django.http import Http404, JsonResponse
from django.utils.deprecation import MiddlewareMixin
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback

logger = logging.getLogger(__name__)


class BrokerError(Exception):
    """A refusal the caller should see, with a machine-readable `code`."""

    code = "error"
    http_status = 400
    # Seconds after which the same request may succeed: `retry_after` in the body, and the
    # HTTP `Retry-After` header.
    retry_after: float | None = None

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retry_after is not None:
            self.retry_after = retry_after

    @property
    def fields(self) -> dict[str, list[str]]:
        return {}


class CodedValidationError(DjangoValidationError):
    """A validator's refusal whose `code` every door answers with, instead of `invalid`
    (a model field's validator that the admin, the API and the socket all run)."""


class Invalid(BrokerError):
    """Input that breaks a rule, with the messages for each field at fault."""

    code = "invalid"

    def __init__(self, message: str = "", *, fields: dict[str, list[str]] | None = None, code: str | None = None):
        self._fields = {field: list(messages) for field, messages in (fields or {}).items()}
        super().__init__(message or describe_fields(self._fields), code=code)

    @property
    def fields(self) -> dict[str, list[str]]:
        return self._fields

    @classmethod
    def from_django(cls, error: DjangoValidationError) -> "Invalid":
        """Convert a model's `full_clean` (or a validator's) ValidationError; `__all__` errors
        are filed under DRF's non-field key, as a serializer files its own."""
        parts = sum(error.error_dict.values(), []) if hasattr(error, "error_dict") else error.error_list
        code = next((part.code for part in parts if isinstance(part, CodedValidationError)), None)
        if hasattr(error, "message_dict"):
            fields = {
                api_settings.NON_FIELD_ERRORS_KEY if field == "__all__" else field: messages
                for field, messages in error.message_dict.items()
            }
            return cls(fields=fields, code=code)
        return cls(" ".join(error.messages), code=code)


class NotFound(BrokerError):
    code = "not_found"
    http_status = 404


class Forbidden(BrokerError):
    code = "forbidden"
    http_status = 403


class BodyTooLarge(BrokerError):
    code = "body_too_large"
    http_status = 413


class Unavailable(BrokerError):
    code = "unavailable"
    http_status = 503


# What redis-py raises, from its sync and asyncio clients alike, while Redis is down, restarting
# or not answering: the request did nothing lasting and works again once Redis is back.
REDIS_OUTAGES = (redis.ConnectionError, redis.TimeoutError)
# What Django raises while Postgres is down, restarting or refusing connections, or when a
# connection broke under a statement (and for a serialisation failure or a lock timeout,
# which a retry also cures): the transaction did not commit.
DATABASE_OUTAGES = (OperationalError, InterfaceError)
STORE_OUTAGES = REDIS_OUTAGES + DATABASE_OUTAGES


def temporarily_unavailable() -> Unavailable:
    """Return the refusal of a request that met a store outage (`STORE_OUTAGES`): send it again shortly."""
    return Unavailable(
        "The broker's store is restarting; nothing was done. Try again in a few seconds.",
        code="temporarily_unavailable",
        retry_after=settings.RENTAHAL_STORE_OUTAGE_RETRY_AFTER,
    )


class TooManyQueries(BrokerError):
    """A user over a fair-share cap; `retry_after` says in how many seconds to try again."""

    code = "too_many_queries"
    http_status = 429

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message, retry_after=retry_after)


def describe_fields(fields: dict[str, list[str]]) -> str:
    """Return one readable line for field errors: `name: msg; other: msg` (non-field errors bare)."""
    return "; ".join(
        " ".join(messages) if field == api_settings.NON_FIELD_ERRORS_KEY else f"{field}: {' '.join(messages)}"
        for field, messages in fields.items()
    )


def error_body(error: BrokerError) -> dict:
    body = {"code": error.code, "message": error.message}
    if error.fields:
        body["fields"] = error.fields
    if error.retry_after is not None:
        body["retry_after"] = error.retry_after
    return body


def error_frame(error: BrokerError) -> dict:
    """Return the WebSocket `error` frame for a refusal (classic clients read `message`)."""
    return {"type": "error", **error_body(error)}


# DRF's codes for refusals the broker names otherwise, so both say the same thing.
DRF_CODES = {"permission_denied": Forbidden.code, "parse_error": "malformed"}


def flatten_detail(detail, prefix: str = "") -> dict[str, list[str]]:
    """Return a DRF error detail as field → messages, nested fields joined with dots
    (`weights.alpha`), the way `Invalid.fields` keeps them."""
    if isinstance(detail, dict):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            flat.update(flatten_detail(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(detail, list) and any(isinstance(item, (dict, list)) for item in detail):
        flat = {}
        for index, item in enumerate(detail):
            if item:
                flat.update(flatten_detail(item, f"{prefix}.{index}" if prefix else str(index)))
        return flat
    messages = [str(item) for item in detail] if isinstance(detail, list) else [str(detail)]
    return {prefix or api_settings.NON_FIELD_ERRORS_KEY: messages}


def as_broker_error(exc: exceptions.APIException) -> BrokerError:
    """Return DRF's exception as the refusal it is."""
    if isinstance(exc, exceptions.ValidationError):
        return Invalid(fields=flatten_detail(exc.detail))
    error = BrokerError(str(exc.detail), code=DRF_CODES.get(exc.default_code, exc.default_code))
    error.http_status = exc.status_code
    return error


def drf_exception_handler(exc, context):
    """Render every refusal of the APIs as `{"error": {...}}`; anything else is a server error."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    elif isinstance(exc, RequestDataTooBig):
        # Django's own cap on a body it reads whole (DATA_UPLOAD_MAX_MEMORY_SIZE), which would
        # otherwise reach the caller as its HTML 400 page.
        exc = BodyTooLarge(f"The body is over the {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}-byte limit.")
    if isinstance(exc, BrokerError):
        set_rollback()
        error, response = exc, Response()
    elif isinstance(exc, exceptions.APIException):
        # DRF's handler sets its headers (WWW-Authenticate, Retry-After) and rolls back.
        error, response = as_broker_error(exc), exception_handler(exc, context)
    else:
        return None
    logger.info("refused %s: %s", error.code, error.message)
    response.data = {"error": error_body(error)}
    response.status_code = error.http_status
    set_retry_after(response, error)
    if getattr(exc, "auth_header", None):
        # Set by DRF on an authentication failure: the scheme the client must use.
        response["WWW-Authenticate"] = exc.auth_header
    return response


def set_retry_after(response, error: BrokerError) -> None:
    if error.retry_after is not None:
        response["Retry-After"] = str(max(1, round(error.retry_after)))


class StoreOutageMiddleware(MiddlewareMixin):
    """Answer an HTTP request that met a Redis or Postgres outage (`STORE_OUTAGES`) with 503
    `temporarily_unavailable` and `Retry-After`, instead of Django's 500: the APIs (DRF
    hands on what its handler does not render), /metrics, the admin and the page alike.
    """

    def process_exception(self, request, exception):
        if not isinstance(exception, STORE_OUTAGES):
            return None
        logger.warning("store unavailable for %s %s: %s", request.method, request.path, exception)
        if isinstance(exception, DATABASE_OUTAGES):
            # Drop the connection that broke now, not at the next request's start, so the
            # first request after Postgres returns is served (as rentahal.db_threads does).
            close_old_connections()
        error = temporarily_unavailable()
        response = JsonResponse({"error": error_body(error)}, status=error.http_status)
        set_retry_after(response, error)
        return response
