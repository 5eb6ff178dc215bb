"""/v1, the OpenAI-compatible door: chat completions (plain and SSE), models, image
generations and embeddings, for the official `openai` client, Open WebUI, LangChain or curl.

Refusals are in OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`, with the
status codes the `openai` client turns into its exception classes (400 BadRequestError,
401 AuthenticationError, 402 over budget, 403 PermissionDeniedError, 404 NotFoundError,
429 RateLimitError, 5xx InternalServerError).
"""
import array
import base64
import functools
import logging
import math
import time

import orjson
from django.http import HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from accounts import limits
from accounts.models import ApiKey
from realms import lifecycle
from realms.doors import catalog
from realms.doors.access import admitted, authenticate, read_json, release, require_model_right
from realms.doors.answers import Submission
from realms.doors.requests import CONVERSATION_HEADER, ChatRequest, parse_chat, parse_embeddings, parse_image
from realms.frames import QuerySubmission, parse_client_id
from rentahal.db_threads import on_db_thread
from rentahal.errors import STORE_OUTAGES, BrokerError, TooManyQueries, temporarily_unavailable

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
}
USAGE_HEADER = "X-Rentahal-Usage"


class QueryFailed(BrokerError):
    """The query was accepted and failed (the model server failed, no worker was free)."""

    code = "query_failed"
    http_status = 502


def json_response(data, *, status: int = 200, headers: dict | None = None) -> HttpResponse:
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def error_body(error: BrokerError) -> dict:
    status = error.http_status
    return {
        "message": error.message,
        "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "code": error.code,
        "param": next(iter(error.fields), None),
    }


def error_response(error: BrokerError) -> HttpResponse:
    headers = {"Retry-After": str(max(1, math.ceil(error.retry_after)))} if isinstance(error, TooManyQueries) else None
    return json_response({"error": error_body(error)}, status=error.http_status, headers=headers)


def door(*methods: str):
    """Make an async view a /v1 endpoint: key-authenticated (no cookies, so no CSRF), its
    methods checked, every refusal answered in OpenAI's shape."""

    def wrap(view):
        @csrf_exempt
        @functools.wraps(view)
        async def endpoint(request, *args, **kwargs):
            if request.method not in methods:
                return error_response(
                    BrokerError(f"{request.method} is not allowed here; use {' or '.join(methods)}.", code="method_not_allowed")
                )
            try:
                key = await authenticate(request)
                return await view(request, key, *args, **kwargs)
            except BrokerError as exc:
                logger.info("refused %s %s: %s %s", request.method, request.path, exc.code, exc.message)
                return error_response(exc)
            except STORE_OUTAGES as exc:
                logger.warning("Redis unavailable for %s: %s", request.path, exc)
                return error_response(temporarily_unavailable())

        return endpoint

    return wrap


def submission_for(request, key: ApiKey, model: str, **fields) -> QuerySubmission:
    """Return the query of a request naming `model` ("" to route by type), refusing a model
    the key may not use or that does not exist. An `Idempotency-Key` header makes a retry
    of the request answer with the query it first made (realms.lifecycle.accept_query)."""
    require_model_right(key, model, fields["query_type"])
    model_name = catalog.model_name_for(catalog.find_entry(model)) if model else ""
    return QuerySubmission(
        model_type="worker_node",
        model_name=model_name,
        api_key=key.pk,
        idempotency_key=parse_client_id(request.headers.get("Idempotency-Key"), "Idempotency-Key"),
        **fields,
    )


async def answer_of(submission: QuerySubmission, key: ApiKey, *, guid: str) -> dict:
    """Accept the query under the key's limits and return its `query_result` frame once it
    is answered."""
    async with admitted(key):
        async with Submission(guid) as submitted:
            await submitted.accept(submission)
            frame = await submitted.outcome()
    if frame["type"] == "error":
        raise QueryFailed(frame["message"])
    return frame


def usage_of(result: dict, prompt_text: str) -> tuple[dict, str]:
    """Return the answer's token counts (from its `query_result` frame) and whether the
    server `reported` them or they are `estimated` (four characters a token)."""
    reported = result["usage"]
    if reported.get("prompt_tokens") is not None:
        prompt, completion, source = reported["prompt_tokens"], reported.get("completion_tokens", 0), "reported"
    else:
        prompt, completion, source = math.ceil(len(prompt_text) / 4), math.ceil(len(result["result"]) / 4), "estimated"
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}, source


@door("POST")
async def chat_completions(request, key: ApiKey):
    chat = parse_chat(read_json(request), conversation_header=request.headers.get(CONVERSATION_HEADER))
    submission = await on_db_thread(submission_for)(request, key, chat.model, **chat.query_fields())
    if chat.stream:
        return await stream_completion(chat, submission, key)
    result = await answer_of(submission, key, guid=key.user_guid)
    usage, source = usage_of(result, chat.prompt_text)
    choice = {"index": 0, "message": {"role": "assistant", "content": result["result"]}, "finish_reason": "stop"}
    body = {**completion_head(result["query_id"], chat, "chat.completion"), "choices": [choice], "usage": usage}
    return json_response(body, headers={USAGE_HEADER: source})


def completion_head(query_id, chat: ChatRequest, kind: str) -> dict:
    return {"id": f"chatcmpl-{query_id}", "object": kind, "created": int(time.time()), "model": chat.model}


def sse(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


async def stream_completion(chat: ChatRequest, submission: QuerySubmission, key: ApiKey) -> StreamingHttpResponse:
    """Accept the query, then answer with server-sent events as its chunks arrive.

    Refusals come before the stream starts, as ordinary error responses. A client that
    goes away mid-stream cancels the model call (`realms.lifecycle.cancel_query`); the query
    ends with what was produced, billed as any answer (base + service seconds x rate).
    """
    admission = await on_db_thread(limits.admit)(key)
    submitted = Submission(key.user_guid)
    try:
        await submitted.__aenter__()
        query_id = await submitted.accept(submission)
    except BaseException:
        await submitted.__aexit__(None, None, None)
        await release(admission)
        raise

    async def events():
        is_done = False
        try:
            head = completion_head(query_id, chat, "chat.completion.chunk")

            def chunk(delta: dict, finish_reason=None) -> bytes:
                return sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

            yield chunk({"role": "assistant", "content": ""})
            sent = []
            async for text in submitted.chunks():
                sent.append(text)
                yield chunk({"content": text})
            final = submitted.final
            if final["type"] == "error":
                yield sse({"error": error_body(QueryFailed(final["message"]))})
            else:
                # A worker that does not stream (or a lost push) leaves the rest to send from the result.
                answer, streamed = final["result"], "".join(sent)
                rest = answer[len(streamed):] if answer.startswith(streamed) else ""
                if rest:
                    yield chunk({"content": rest})
                yield chunk({}, "stop")
                if chat.include_usage:
                    usage, _ = usage_of(final, chat.prompt_text)
                    yield sse({**head, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
            is_done = True
        finally:
            if not is_done:
                logger.info("stream of query %s closed by its client; cancelling it", query_id)
                await lifecycle.cancel_query(query_id)
            await submitted.__aexit__(None, None, None)
            await release(admission)

    return StreamingHttpResponse(
        events(), content_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def model_object(entry: catalog.Entry) -> dict:
    return {"id": entry.id, "object": "model", "created": 0, "owned_by": "rentahal", "kind": entry.kind}


@door("GET")
async def list_models(request, key: ApiKey):
    entries = await on_db_thread(catalog.entries_for)(key)
    return json_response({"object": "list", "data": [model_object(entry) for entry in entries]})


@door("GET")
async def retrieve_model(request, key: ApiKey, model: str):
    if not key.may_use(model):
        raise catalog.unknown_model(model)
    return json_response(model_object(await on_db_thread(catalog.find_entry)(model)))


@door("POST")
async def image_generations(request, key: ApiKey):
    image = parse_image(read_json(request))
    submission = await on_db_thread(submission_for)(request, key, image.model, **image.query_fields())
    result = await answer_of(submission, key, guid=key.user_guid)
    if image.response_format == "url":
        item = {"url": f"data:image/png;base64,{result['result']}"}
    else:
        item = {"b64_json": result["result"]}
    return json_response({"created": int(time.time()), "data": [{**item, "revised_prompt": image.prompt}]})


def encode_vector(vector: list[float], encoding_format: str):
    if encoding_format == "base64":
        return base64.b64encode(array.array("f", vector).tobytes()).decode()
    return vector


@door("POST")
async def embeddings(request, key: ApiKey):
    wanted = parse_embeddings(read_json(request))
    await on_db_thread(require_model_right)(key, wanted.model, "chat")
    entry = await on_db_thread(catalog.find_entry)(wanted.model)
    await on_db_thread(catalog.require_embeddings)(entry)
    submission = await on_db_thread(submission_for)(request, key, wanted.model, **wanted.query_fields())
    result = await answer_of(submission, key, guid=key.user_guid)
    vectors = orjson.loads(result["result"])
    data = [
        {"object": "embedding", "index": index, "embedding": encode_vector(vector, wanted.encoding_format)}
        for index, vector in enumerate(vectors)
    ]
    usage, source = usage_of(result, "".join(wanted.inputs))
    body = {
        "object": "list",
        "data": data,
        "model": wanted.model,
        "usage": {"prompt_tokens": usage["prompt_tokens"], "total_tokens": usage["prompt_tokens"]},
    }
    return json_response(body, headers={USAGE_HEADER: source})
