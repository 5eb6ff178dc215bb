"""The classic REST routes of the original RENT-A-HAL (`POST /api/chat`, `/api/vision`,
`/api/imagine`, `/api/whisper`, `/api/bark`), kept in their shapes: a request is the
`query` object of a `submit_query` frame, an answer the fields of its `query_result`
(docs/protocol.md §1). The original let anyone in and billed nobody; here a request needs
an API key and is queued and billed like any query. Refusals are the APIs' usual
`{"error": {"code", "message"}}`."""
import dataclasses
import functools
import logging
import math

import orjson
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.models import ApiKey
from pools.health import serving_workers
from pools.selection import NoWorkerAvailable
from realms.doors import catalog
from realms.doors.access import admitted, authenticate, read_json, require_model_right
from realms.doors.answers import Submission
from realms.frames import QuerySubmission, parse_client_id, parse_speech_to_text, parse_submission, parse_text_to_speech
from realms.routing import realm_for_query_type
from rentahal.db_threads import on_db_thread
from rentahal.errors import STORE_OUTAGES, BrokerError, TooManyQueries, error_body, temporarily_unavailable
from rentahal.query_types import QueryType

logger = logging.getLogger(__name__)


def json_response(data, *, status: int = 200, headers: dict | None = None) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(error: BrokerError) -> HttpResponse:
    headers = {"Retry-After": str(max(1, math.ceil(error.retry_after)))} if isinstance(error, TooManyQueries) else None
    return json_response({"error": error_body(error)}, status=error.http_status, headers=headers)


def classic_route(view):
    """Make a view a classic POST route: key-authenticated, refusals as `{"error": ...}`."""

    @csrf_exempt
    @functools.wraps(view)
    async def endpoint(request):
        if request.method != "POST":
            return error_response(BrokerError(f"{request.method} is not allowed here; use POST.", code="method_not_allowed"))
        try:
            key = await authenticate(request)
            submission = view(read_json(request), request.headers.get("Idempotency-Key"))
            submission = dataclasses.replace(
                submission, api_key=key.pk, model_name=await on_db_thread(resolve_model_name)(submission.model_name)
            )
            await on_db_thread(require_model_right)(key, submission.model_name, submission.query_type)
            return json_response(await answer_fields(key, submission))
        except BrokerError as exc:
            logger.info("refused %s: %s %s", request.path, exc.code, exc.message)
            return error_response(exc)
        except STORE_OUTAGES as exc:
            logger.warning("Redis unavailable for %s: %s", request.path, exc)
            return error_response(temporarily_unavailable())

    return endpoint


def resolve_model_name(model_name: str) -> str:
    """Return the `model_name` to route by: an alias or realm (`$...`) must exist, else it is
    refused before anything is written; other text passes as classic clients send it (it
    reaches a worker it names, or is ignored)."""
    if not model_name.startswith("$"):
        return model_name
    return catalog.model_name_for(catalog.find_entry(model_name))


def require_speech_worker() -> None:
    """Refuse a speech request when no speech worker serves, before anything is written."""
    realm = realm_for_query_type(QueryType.SPEECH)
    if not serving_workers(realm.name, QueryType.SPEECH):
        raise NoWorkerAvailable("No speech worker is available.")


async def answer_fields(key: ApiKey, submission: QuerySubmission) -> dict:
    """Accept the query under the key's limits and return its `query_result` fields."""
    if submission.query_type == QueryType.SPEECH:
        await on_db_thread(require_speech_worker)()
    async with admitted(key):
        async with Submission(key.user_guid) as submitted:
            await submitted.accept(submission)
            frame = await submitted.outcome()
    if frame["type"] == "error":
        error = BrokerError(frame["message"], code="query_failed")
        error.http_status = 502
        raise error
    return {name: value for name, value in frame.items() if name != "type"}


def typed(query_type: str):
    """Return a route for `query_type`: the body is a `submit_query` frame's `query`."""

    def parse(body: dict, idempotency_key: str | None) -> QuerySubmission:
        return parse_submission({**body, "query_type": query_type}, idempotency_key=idempotency_key)

    return classic_route(parse)


chat = typed(QueryType.CHAT)
vision = typed(QueryType.VISION)
imagine = typed(QueryType.IMAGINE)


def speech_route(parse_frame):
    """Return a route whose body is a speech frame's (`speech_to_text`: `audio`;
    `text_to_speech`: `text`), parsed as /ws parses it (realms.frames)."""

    def parse(body: dict, idempotency_key: str | None) -> QuerySubmission:
        submission = parse_frame(body)
        return dataclasses.replace(submission, idempotency_key=parse_client_id(idempotency_key, "idempotency_key"))

    return classic_route(parse)


# Speech to text: `audio` (base64 WAV or WebM) in, the transcription as `text`.
whisper = speech_route(parse_speech_to_text)
# Text to speech: `text` in, the spoken answer as base64 WAV `audio`.
bark = speech_route(parse_text_to_speech)
