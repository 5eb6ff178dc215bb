"""The Ollama format: POST /api/chat streamed as NDJSON until a line says "done": true."""
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


class OllamaClient(ModelClient):
    wire_format = "ollama"

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        """Stream the chat answer, handing each piece to `on_chunk` as it arrives."""
        message = {"role": "user", "content": request.prompt}
        if request.image is not None:
            message["images"] = [request.image]
        payload = {"model": worker.model or request.model_name, "messages": [message], "stream": True}
        async with post_for_answer(
            session, worker, "/api/chat", payload, limits=limits, headers=bearer_headers(worker)
        ) as body:
            return await body.streamed_answer(
                lambda line: self.content_of(worker, line), on_chunk=on_chunk, end_marker='a "done": true line'
            )

    @staticmethod
    def content_of(worker, line: bytes) -> tuple[str, bool]:
        """Return the text one NDJSON line adds, and whether it is the last line."""
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise malformed(worker, f"a stream line is not JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise malformed(worker, "a stream line is not a JSON object")
        if "error" in data:
            # Ollama reports failures that start mid-stream as an {"error": ...} line.
            raise ModelServerError(f"{worker.name} failed while answering: {data['error']}")
        is_done = data.get("done") is True
        message = data.get("message")
        if message is None and is_done:
            return "", True
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise malformed(worker, "a stream line has no message.content text")
        return content, is_done

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        return await probe_status(session, worker, "/api/tags", timeout=timeout, headers=bearer_headers(worker))
