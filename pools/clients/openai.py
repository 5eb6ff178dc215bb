"""The OpenAI-compatible format (llama.cpp server, vLLM, LocalAI): POST /v1/chat/completions as SSE."""
from __future__ import annotations

import aiohttp
import orjson

from .base import (
    CallLimits,
    ChunkCallback,
    ModelAnswer,
    ModelClient,
    ModelRequest,
    ModelServerError,
    bearer_headers,
    malformed,
    post_for_answer,
    probe_status,
)


class OpenAIClient(ModelClient):
    wire_format = "openai"

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        """Stream the completion, handing each delta to `on_chunk` as it arrives."""
        if request.image is None:
            content = request.prompt
        else:
            content = [
                {"type": "text", "text": request.prompt},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{request.image}"}},
            ]
        payload = {"messages": [{"role": "user", "content": content}], "stream": True}
        model = worker.model or request.model_name
        if model:
            # llama.cpp serves one model and ignores the name; OpenAI and vLLM need it.
            payload["model"] = model
        async with post_for_answer(
            session, worker, "/v1/chat/completions", payload, limits=limits, headers=bearer_headers(worker)
        ) as body:
            return await body.streamed_answer(
                lambda line: self.delta_of(worker, line), on_chunk=on_chunk, end_marker="data: [DONE]"
            )

    @staticmethod
    def delta_of(worker, line: bytes) -> tuple[str, bool]:
        """Return the text one SSE line adds, and whether it is the last (data: [DONE]).

        Only "data:" fields carry the completion; comments, other fields and role-only,
        finish or usage events add no text.
        """
        if not line.startswith(b"data:"):
            return "", False
        data_field = line[5:].strip()
        if data_field == b"[DONE]":
            return "", True
        try:
            event = orjson.loads(data_field)
        except orjson.JSONDecodeError as exc:
            raise malformed(worker, f"an event is not JSON ({exc})") from exc
        if not isinstance(event, dict):
            raise malformed(worker, "an event is not a JSON object")
        if "error" in event:
            error = event["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ModelServerError(f"{worker.name} failed while answering: {message}")
        choices = event.get("choices")
        if not isinstance(choices, list):
            raise malformed(worker, "an event has no choices list")
        if not choices:
            return "", False
        delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
        if not isinstance(delta, dict):
            raise malformed(worker, "choices[0] has no delta")
        content = delta.get("content") or ""
        if not isinstance(content, str):
            raise malformed(worker, "choices[0].delta.content is not text")
        return content, False

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        return await probe_status(session, worker, "/v1/models", timeout=timeout, headers=bearer_headers(worker))
