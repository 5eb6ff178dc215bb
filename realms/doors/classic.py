"""The classic REST routes of the original RENT-A-HAL (`POST /api/chat`, `/api/vision`,
`/api/imagine`, `/api/whisper`, `/api/bark`), kept in their shapes: a request is the
`query` object of a `submit_query` frame, an answer the fields of its `query_result`
(docs/protocol.md §1). The original let anyone in and billed nobody; here a request needs
an API key and is queued and billed like any query. Refusals are the APIs' usual
`{"error": {"code", "message"}}`."""
import base64
import binascii
import dataclasses
import functools
import logging
import math

import orjson
from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.models import ApiKey, Query
from pools.health import serving_workers
from pools.selection import NoWorkerAvailable
from realms import lifecycle
from realms.doors import catalog
from realms.doors.access import admitted, authenticate, read_json, require_model_right
from realms.doors.answers import Submission
from realms.frames import QuerySubmission, parse_client_id, parse_submission, require_str
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
            query = await submitted.answer()
    if query.status == Query.Status.FAILED:
        error = BrokerError(f"Query failed: {query.error}", code="query_failed")
        error.http_status = 502
        raise error
    fields = lifecycle.result_frame(query)
    del fields["type"]
    return fields


def typed(query_type: str):
    """Return a route for `query_type`: the body is a `submit_query` frame's `query`."""

    def parse(body: dict, idempotency_key: str | None) -> QuerySubmission:
        return parse_submission({**body, "query_type": query_type}, idempotency_key=idempotency_key)

    return classic_route(parse)


chat = typed(QueryType.CHAT)
vision = typed(QueryType.VISION)
imagine = typed(QueryType.IMAGINE)


def speech(task: str, body: dict, idempotency_key: str | None, *, prompt: str, audio: str = "") -> QuerySubmission:
    options = {"task": task, "audio": audio} if audio else {"task": task}
    return QuerySubmission(
        prompt=prompt,
        query_type=QueryType.SPEECH,
        model_type="speech",
        model_name=require_str(body, "model_name", required=False)[:128],
        image="",
        idempotency_key=parse_client_id(idempotency_key, "idempotency_key"),
        options=options,
    )


@classic_route
def whisper(body: dict, idempotency_key: str | None) -> QuerySubmission:
    """Speech to text: `audio` (base64 wav or webm) in, its transcription as the `result`."""
    return speech("transcribe", body, idempotency_key, prompt="(audio)", audio=strip_audio(require_str(body, "audio")))


@classic_route
def bark(body: dict, idempotency_key: str | None) -> QuerySubmission:
    """Text to speech: `text` in, base64 audio as the `result`."""
    text = require_str(body, "text")
    if not text.strip() or len(text) > settings.RENTAHAL_MAX_PROMPT_CHARS:
        raise BrokerError(f"Field 'text' must be 1 to {settings.RENTAHAL_MAX_PROMPT_CHARS} characters.", code="bad_field")
    return speech("speak", body, idempotency_key, prompt=text)


def strip_audio(audio: str) -> str:
    """Return the base64 of the audio (a data: URL is accepted), refusing what is not base64."""
    payload = audio.split(",", 1)[1] if audio.startswith("data:") else audio
    try:
        size = len(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError):
        raise BrokerError("Field 'audio' is not valid base64.", code="bad_field") from None
    if not size:
        raise BrokerError("Field 'audio' is empty.", code="bad_field")
    return payload
