"""The Anthropic Messages API (the original's `claude` model type): POST /v1/messages, streamed
as server-sent events until a message_stop event."""
from __future__ import annotations

import aiohttp
import orjson
from django.conf import settings

from pools import providers

from .base import (
    CallLimits,
    ChunkCallback,
    ModelAnswer,
    ModelClient,
    ModelRequest,
    ModelServerError,
    malformed,
    post_for_answer,
    probe_status,
    required_key,
)

# The API version every request names; the events parsed here are this version's.
API_VERSION = "2023-06-01"

# Error types an `error` event may carry mid-stream, by whose fault they are
# (ModelServerError.kind); any other type is the server's.
STREAM_ERROR_KINDS = {
    "invalid_request_error": "client",
    "authentication_error": "auth",
    "permission_error": "auth",
    "rate_limit_error": "rate_limited",
}


class AnthropicClient(ModelClient):
    wire_format = "anthropic"

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        """Stream the message, handing each text delta to `on_chunk` as it arrives."""
        headers = {"x-api-key": required_key(worker, self.wire_format), "anthropic-version": API_VERSION}
        if request.image is None:
            content = request.prompt
        else:
            content = [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": request.image}},
                {"type": "text", "text": request.prompt},
            ]
        payload = {
            "model": worker.model or request.model_name,
            "max_tokens": settings.RENTAHAL_HOSTED_MAX_TOKENS,
            "messages": [{"role": "user", "content": content}],
            "stream": True,
        }
        async with post_for_answer(session, worker, "/v1/messages", payload, limits=limits, headers=headers) as body:
            return await body.streamed_answer(
                lambda line: self.text_of(worker, line), on_chunk=on_chunk, end_marker="a message_stop event"
            )

    @staticmethod
    def text_of(worker, line: bytes) -> tuple[str, bool]:
        """Return the text one SSE line adds, and whether it ends the message.

        Every event's data repeats its name in `type`, so only data lines are read; the
        `event:` lines, pings and the start, stop and usage events add no text.
        """
        if not line.startswith(b"data:"):
            return "", False
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError as exc:
            raise malformed(worker, f"an event is not JSON ({exc})") from exc
        if not isinstance(event, dict):
            raise malformed(worker, "an event is not a JSON object")
        kind = event.get("type")
        if kind == "message_stop":
            return "", True
        if kind == "error":
            error = event.get("error") if isinstance(event.get("error"), dict) else {}
            raise ModelServerError(
                f"{worker.name} failed while answering: {error.get('type', 'error')}: {error.get('message', '')}",
                kind=STREAM_ERROR_KINDS.get(error.get("type"), "server"),
            )
        if kind != "content_block_delta":
            return "", False
        delta = event.get("delta")
        if not isinstance(delta, dict):
            raise malformed(worker, "a content_block_delta has no delta")
        if delta.get("type") != "text_delta":
            return "", False
        text = delta.get("text")
        if not isinstance(text, str):
            raise malformed(worker, "a text_delta has no text")
        return text, False

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        """GET /v1/models, which answers 200 to a valid key; without a key it says 401 for itself."""
        headers = {"anthropic-version": API_VERSION}
        key = providers.provider_key(self.wire_format, worker.api_key)
        if key:
            headers["x-api-key"] = key
        return await probe_status(session, worker, "/v1/models", timeout=timeout, headers=headers)
