"""Who is asking and may they: the API key of a request, its limits, its body, and the
conversation it names. Every door reads these here, so they agree."""
import contextlib
from collections.abc import AsyncIterator

import orjson
from django.conf import settings

from accounts import limits
from accounts.actions.keys import authenticate_key
from accounts.models import ApiKey
from realms.routing import realm_for_query_type
from rentahal.db_threads import on_db_thread
from rentahal.errors import STORE_OUTAGES, BodyTooLarge, BrokerError, Forbidden, temporarily_unavailable


def bearer_secret(request) -> str | None:
    """Return the key of `Authorization: Bearer rh-...` (the header every OpenAI client sends)."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else None


async def authenticate(request) -> ApiKey:
    return await on_db_thread(authenticate_key)(bearer_secret(request))


def require_model_right(key: ApiKey, model: str, query_type: str) -> None:
    """Refuse a model the key may not use; a request naming none uses the realm of its type."""
    model = model or realm_for_query_type(query_type).name
    if not key.may_use(model):
        raise Forbidden(f"This API key may not use '{model[:128]}'.", code="model_not_allowed")


@contextlib.asynccontextmanager
async def admitted(key: ApiKey) -> AsyncIterator[limits.Admission]:
    """Hold one of the key's places for the request's life (accounts.limits)."""
    try:
        admission = await on_db_thread(limits.admit)(key)
    except STORE_OUTAGES:
        raise temporarily_unavailable() from None
    try:
        yield admission
    finally:
        await release(admission)


async def release(admission: limits.Admission) -> None:
    """Give the key's place back; if Redis is down its lease expires by itself."""
    try:
        await on_db_thread(limits.release)(admission)
    except STORE_OUTAGES:
        pass


def max_body_bytes() -> int:
    """Return the largest body a door reads: an image as base64 plus the prompt, with room."""
    return settings.RENTAHAL_MAX_IMAGE_BYTES * 4 // 3 + 4 * settings.RENTAHAL_MAX_PROMPT_CHARS + 64 * 1024


def read_json(request) -> dict:
    """Return the request's JSON object, refusing a body too large or not a JSON object."""
    limit = max_body_bytes()
    body = request.read(limit + 1)
    if len(body) > limit:
        raise BodyTooLarge(f"The body is over the {limit}-byte limit.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BrokerError(f"The body is not JSON: {exc}", code="malformed") from None
    if not isinstance(data, dict):
        raise BrokerError("The body must be a JSON object.", code="malformed")
    return data
