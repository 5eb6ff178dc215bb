"""The OpenAI-compatible format (llama.cpp server, vLLM, LocalAI): POST /v1/chat/completions as SSE."""
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

# Options of a request passed to the server under the same names (accounts.Query.options).
SAMPLING_OPTIONS = ("max_tokens", "temperature", "stop")


class OpenAIClient(ModelClient):
    wire_format = "openai"
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
        """Stream the completion, handing each delta to `on_chunk` as it arrives, and keep
        the token counts the server reports in its last event (`include_usage`)."""
        payload = {"messages": self.messages_of(request), "stream": True, "stream_options": {"include_usage": True}}
        payload.update({name: request.options[name] for name in SAMPLING_OPTIONS if name in request.options})
        model = worker.model or request.model_name
        if model:
            # llama.cpp serves one model and ignores the name; OpenAI and vLLM need it.
            payload["model"] = model
        usage: dict = {}
        async with post_for_answer(
            session, worker, "/v1/chat/completions", payload, limits=limits, headers=bearer_headers(worker)
        ) as body:
            answer = await body.streamed_answer(
                lambda line: self.delta_of(worker, line, usage), on_chunk=on_chunk, end_marker="data: [DONE]"
            )
        return dataclasses.replace(answer, usage=usage)

    @staticmethod
    def messages_of(request: ModelRequest) -> list[dict]:
        """Return the conversation, the image (if any) as a data URL in its last message."""
        messages = request.chat_messages()
        if request.image is not None:
            messages[-1]["content"] = [
                {"type": "text", "text": messages[-1]["content"]},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{request.image}"}},
            ]
        return messages

    async def embed(
        self, session: aiohttp.ClientSession, worker, request: ModelRequest, *, limits: CallLimits
    ) -> ModelAnswer:
        payload = {"model": worker.model or request.model_name, "input": request.embedding_inputs()}
        async with post_for_answer(
            session, worker, "/v1/embeddings", payload, limits=limits, headers=bearer_headers(worker)
        ) as body:
            data = await body.json()
        try:
            vectors = [item["embedding"] for item in sorted(data["data"], key=lambda item: item["index"])]
        except (KeyError, TypeError):
            raise malformed(worker, 'expected {"data": [{"index": 0, "embedding": [...]}, ...]}') from None
        check_vectors(worker, vectors, request)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return ModelAnswer(
            result=orjson.dumps(vectors).decode(),
            time_to_first_byte=body.time_to_first_byte,
            usage=token_counts(usage.get("prompt_tokens"), 0),
        )

    @staticmethod
    def delta_of(worker, line: bytes, usage: dict | None = None) -> tuple[str, bool]:
        """Return the text one SSE line adds, and whether it is the last (data: [DONE]);
        token counts of a usage event go into `usage`.

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
        if usage is not None and isinstance(event.get("usage"), dict):
            usage.update(token_counts(event["usage"].get("prompt_tokens"), event["usage"].get("completion_tokens")))
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
