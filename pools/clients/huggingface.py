"""Hugging Face text-generation-inference (the original's `huggingface` model type): a TGI
server or an Inference Endpoint, asked at its root with `"stream": true` and answering with
server-sent events until one carries the whole `generated_text`."""
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


class HuggingFaceClient(ModelClient):
    wire_format = "huggingface"

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        """Stream the generation, handing each token's text to `on_chunk` as it arrives.

        The root route is TGI's own and an Inference Endpoint's; it generates or streams
        as `stream` says. A vision model reads an image given inline as a markdown image.
        """
        headers = {"Authorization": f"Bearer {required_key(worker, self.wire_format)}"}
        inputs = request.prompt
        if request.image is not None:
            inputs = f"![](data:image/png;base64,{request.image}){request.prompt}"
        payload = {"inputs": inputs, "parameters": {"max_new_tokens": settings.RENTAHAL_HOSTED_MAX_TOKENS}, "stream": True}
        async with post_for_answer(session, worker, "", payload, limits=limits, headers=headers) as body:
            return await body.streamed_answer(
                lambda line: self.token_of(worker, line), on_chunk=on_chunk, end_marker="an event with generated_text"
            )

    @staticmethod
    def token_of(worker, line: bytes) -> tuple[str, bool]:
        """Return the text one SSE line adds, and whether it is the last event.

        Special tokens (the end-of-sequence marker) are not text; the last event is the one
        whose `generated_text` is filled in.
        """
        if not line.startswith(b"data:"):
            return "", False
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError as exc:
            raise malformed(worker, f"an event is not JSON ({exc})") from exc
        if not isinstance(event, dict):
            raise malformed(worker, "an event is not a JSON object")
        if "error" in event:
            raise ModelServerError(f"{worker.name} failed while answering: {event['error']}")
        token = event.get("token")
        if not isinstance(token, dict) or not isinstance(token.get("text"), str):
            raise malformed(worker, "an event has no token text")
        text = "" if token.get("special") else token["text"]
        return text, event.get("generated_text") is not None

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        key = providers.provider_key(self.wire_format, worker.api_key)
        headers = {"Authorization": f"Bearer {key}"} if key else None
        return await probe_status(session, worker, "/health", timeout=timeout, headers=headers)
