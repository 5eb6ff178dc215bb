"""The Ollama format: POST /api/chat streamed as NDJSON until a line says "done": true."""
from __future__ import annotations

import dataclasses

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
    check_vectors,
    token_counts,
)

# Request options (accounts.Query.options) and Ollama's names for them.
OLLAMA_OPTIONS = {"max_tokens": "num_predict", "temperature": "temperature", "stop": "stop"}


class OllamaClient(ModelClient):
    wire_format = "ollama"
    serves_embeddings = True

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        """Stream the chat answer, handing each piece to `on_chunk` as it arrives, and keep
        the token counts of its last line."""
        messages = request.chat_messages()
        if request.image is not None:
            messages[-1]["images"] = [request.image]
        payload = {"model": worker.model or request.model_name, "messages": messages, "stream": True}
        options = {OLLAMA_OPTIONS[name]: request.options[name] for name in OLLAMA_OPTIONS if name in request.options}
        if options:
            payload["options"] = options
        usage: dict = {}
        async with post_for_answer(
            session, worker, "/api/chat", payload, limits=limits, headers=bearer_headers(worker)
        ) as body:
            answer = await body.streamed_answer(
                lambda line: self.content_of(worker, line, usage), on_chunk=on_chunk, end_marker='a "done": true line'
            )
        return dataclasses.replace(answer, usage=usage)

    async def embed(
        self, session: aiohttp.ClientSession, worker, request: ModelRequest, *, limits: CallLimits
    ) -> ModelAnswer:
        payload = {"model": worker.model or request.model_name, "input": request.embedding_inputs()}
        async with post_for_answer(
            session, worker, "/api/embed", payload, limits=limits, headers=bearer_headers(worker)
        ) as body:
            data = await body.json()
        vectors = data.get("embeddings") if isinstance(data, dict) else None
        check_vectors(worker, vectors, request)
        return ModelAnswer(
            result=orjson.dumps(vectors).decode(),
            time_to_first_byte=body.time_to_first_byte,
            usage=token_counts(data.get("prompt_eval_count"), 0),
        )

    @staticmethod
    def content_of(worker, line: bytes, usage: dict | None = None) -> tuple[str, bool]:
        """Return the text one NDJSON line adds, and whether it is the last line; the last
        line's token counts go into `usage`."""
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
        if is_done and usage is not None:
            usage.update(token_counts(data.get("prompt_eval_count"), data.get("eval_count")))
        message = data.get("message")
        if message is None and is_done:
            return "", True
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise malformed(worker, "a stream line has no message.content text")
        return content, is_done

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        return await probe_status(session, worker, "/api/tags", timeout=timeout, headers=bearer_headers(worker))
