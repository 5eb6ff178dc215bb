"""A fake model server speaking every wire format of docs/protocol.md §2 on one port, with knobs for
delay and failure: the one seam tests and benchmarks put between rentahal and real models."""
from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import dataclasses
import random
import threading

import orjson
from aiohttp import web

from pools.testing.fake_answers import (
    FAKE_CREATED_AT,
    TGI_INLINE_IMAGE,
    FAKE_MODEL,
    OVERSIZED_PIECE_BYTES,
    BadRequest,
    FakeConfig,
    anthropic_error,
    answer_text,
    chat_prompt,
    embedding_of,
    token_count,
    json_response,
    png_for,
    redirect_response,
    pieces_of,
    words_of,
)


class FakeModelServer:
    """An aiohttp server answering /predict, txt2img, Ollama, OpenAI, Anthropic and TGI routes from one port."""

    def __init__(self, **knobs):
        self.config = FakeConfig().updated(knobs)
        self.random = random.Random(self.config.seed)
        self.requests: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def configure(self, **knobs) -> FakeConfig:
        """Change knobs for the requests that arrive from now on (call on the server's loop).

        Every change reseeds the failure draw, so a test that sets failure_rate sees the
        same sequence each run.
        """
        self.config = self.config.updated(knobs)
        self.random = random.Random(self.config.seed)
        return self.config

    def stats(self) -> dict:
        return {"requests": dict(self.requests), "in_flight": self.in_flight, "peak_in_flight": self.peak_in_flight}

    def reset_stats(self) -> None:
        self.requests.clear()
        self.peak_in_flight = self.in_flight

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Start listening and return the bound port (a free one when `port` is 0)."""
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        model_routes = {
            "/predict": self.answer_predict,
            "/sdapi/v1/txt2img": self.answer_txt2img,
            "/api/chat": self.answer_ollama_chat,
            "/api/generate": self.answer_ollama_generate,
            "/v1/chat/completions": self.answer_openai_chat,
            "/v1/messages": self.answer_anthropic_messages,
            # Hugging Face text-generation-inference takes generation requests at its root.
            "/": self.answer_tgi_generate,
            "/v1/embeddings": self.answer_openai_embeddings,
            "/api/embed": self.answer_ollama_embed,
        }
        health_routes = {
            "/health": lambda ok: {"status": "healthy" if ok else "unhealthy"},
            "/api/tags": lambda ok: {"models": [{"name": f"{FAKE_MODEL}:latest", "model": f"{FAKE_MODEL}:latest"}]},
            "/v1/models": lambda ok: {"object": "list", "data": [{"id": FAKE_MODEL, "object": "model", "owned_by": "rentahal"}]},
        }
        for path, answer in model_routes.items():
            app.router.add_post(path, self.model_route(answer))
        for path, body in health_routes.items():
            app.router.add_get(path, self.health_route(body))
        app.router.add_get("/_fake/config", self.get_config)
        app.router.add_post("/_fake/config", self.post_config)
        app.router.add_get("/_fake/stats", self.get_stats)
        app.router.add_delete("/_fake/stats", self.delete_stats)
        # No access log: benchmarks push thousands of requests a second through here.
        # handler_cancellation ends a hung handler when its client gives up, so in_flight stays true.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        # A backlog like a production server's (uvicorn's default is 2,048): with aiohttp's
        # 128, a thousand streams opened at once found connects timing out.
        site = web.TCPSite(self._runner, host, port, backlog=4096)
        await site.start()
        self.host = host
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            self._stopping.set()
            await self._runner.cleanup()
            self._runner = None

    def is_authorized(self, request: web.Request, config: FakeConfig) -> bool:
        """Check the key where the route's format sends it: Anthropic's Messages API in
        `x-api-key`, the rest as a bearer token; `/v1/models`, shared by OpenAI and Anthropic,
        takes either."""
        if not config.api_key:
            return True
        bearer = request.headers.get("Authorization") == f"Bearer {config.api_key}"
        anthropic = request.headers.get("x-api-key") == config.api_key
        if request.path == "/v1/messages":
            return anthropic
        if request.path == "/v1/models":
            return bearer or anthropic
        return bearer

    def model_route(self, answer):
        """Wrap a format's answer in the knobs every model route obeys, and count it."""

        async def handle(request: web.Request) -> web.StreamResponse:
            self.requests[request.path] += 1
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                config = self.config
                if not self.is_authorized(request, config):
                    return json_response({"error": {"message": "invalid api key"}}, status=401)
                try:
                    payload = orjson.loads(await request.read())
                except orjson.JSONDecodeError as exc:
                    raise BadRequest(f"body is not JSON: {exc}") from exc
                if not isinstance(payload, dict):
                    raise BadRequest("body must be a JSON object")
                if config.reset:
                    request.transport.abort()
                    return web.Response()
                if config.redirect_to:
                    return redirect_response(config.redirect_to)
                if config.hang:
                    await self._stopping.wait()
                    return json_response({"error": "server stopping"}, status=503)
                if config.delay:
                    await asyncio.sleep(config.delay)
                if config.failure_rate and self.random.random() < config.failure_rate:
                    headers = {"Retry-After": f"{config.retry_after:g}"} if config.fail_status == 429 else None
                    error = config.fail_message or f"fake failure (HTTP {config.fail_status})"
                    return json_response({"error": error}, status=config.fail_status, headers=headers)
                if config.oversized_bytes:
                    return await self.send_oversized(request, config.oversized_bytes)
                return await answer(request, payload, config)
            finally:
                self.in_flight -= 1

        return handle

    def health_route(self, body):
        async def handle(request: web.Request) -> web.Response:
            self.requests[request.path] += 1
            config = self.config
            if not self.is_authorized(request, config):
                return json_response({"error": {"message": "invalid api key"}}, status=401)
            if config.redirect_to:
                return redirect_response(config.redirect_to)
            return json_response(body(config.health_status == 200), status=config.health_status)

        return handle

    async def send_oversized(self, request: web.Request, size: int) -> web.StreamResponse:
        """Stream `size` bytes without a Content-Length, so a client must count to stop it."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        piece = b"x" * OVERSIZED_PIECE_BYTES
        try:
            for start in range(0, size, OVERSIZED_PIECE_BYTES):
                await response.write(piece[: size - start])
            await response.write_eof()
        except ConnectionResetError:
            pass  # The client stopped reading at its cap, which is the point.
        return response

    async def answer_predict(self, request, payload, config) -> web.StreamResponse:
        text = "".join(pieces_of(answer_text(payload.get("prompt"), payload.get("image")), config.tokens))
        if config.malformed:
            return web.Response(body=b'{"response": ', content_type="application/json")
        return json_response({"response": text})

    async def answer_txt2img(self, request, payload, config) -> web.StreamResponse:
        prompt = payload.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("prompt must be a string")
        if config.malformed:
            return web.Response(body=b'{"images": [', content_type="application/json")
        image = base64.b64encode(png_for(prompt)).decode()
        return json_response({"images": [image], "parameters": payload, "info": "{}"})

    async def answer_ollama_chat(self, request, payload, config) -> web.StreamResponse:
        prompt, image = chat_prompt(payload)
        pieces = pieces_of(answer_text(prompt, image), config.tokens)
        model = payload.get("model") or FAKE_MODEL
        if payload.get("stream") is False:
            message = {"role": "assistant", "content": "".join(pieces)}
            return json_response({"model": model, "created_at": FAKE_CREATED_AT, "message": message, "done": True})
        lines = [
            {"model": model, "created_at": FAKE_CREATED_AT, "message": {"role": "assistant", "content": word}, "done": False}
            for word in pieces
        ]
        last = {
            "model": model, "created_at": FAKE_CREATED_AT, "message": {"role": "assistant", "content": ""}, "done": True,
            "prompt_eval_count": token_count(prompt), "eval_count": token_count("".join(pieces)),
        }
        return await self.stream_ndjson(request, lines, last, config)

    async def answer_ollama_generate(self, request, payload, config) -> web.StreamResponse:
        pieces = pieces_of(answer_text(payload.get("prompt"), (payload.get("images") or [None])[0]), config.tokens)
        model = payload.get("model") or FAKE_MODEL
        if payload.get("stream") is False:
            return json_response({"model": model, "created_at": FAKE_CREATED_AT, "response": "".join(pieces), "done": True})
        lines = [{"model": model, "created_at": FAKE_CREATED_AT, "response": word, "done": False} for word in pieces]
        last = {"model": model, "created_at": FAKE_CREATED_AT, "response": "", "done": True}
        return await self.stream_ndjson(request, lines, last, config)

    async def stream_ndjson(self, request, lines: list[dict], last: dict, config) -> web.StreamResponse:
        """Stream Ollama's NDJSON; a malformed stream stops after its first line, never saying done."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await self.write_pieces(response, [orjson.dumps(line) + b"\n" for line in lines], config)
        if not config.malformed:
            await response.write(orjson.dumps(last) + b"\n")
        await response.write_eof()
        return response

    async def write_pieces(self, response: web.StreamResponse, pieces: list[bytes], config) -> None:
        """Write an answer's pieces as the knobs say: paced by --token-delay, stopping for
        --pause-seconds after --pause-after pieces; a malformed stream stops after its first."""
        for index, piece in enumerate(pieces[:1] if config.malformed else pieces):
            if index and config.token_delay:
                await asyncio.sleep(config.token_delay)
            if index and index == config.pause_after:
                await asyncio.sleep(config.pause_seconds)
            await response.write(piece)

    async def answer_openai_chat(self, request, payload, config) -> web.StreamResponse:
        prompt, image = chat_prompt(payload)
        pieces = pieces_of(answer_text(prompt, image), config.tokens)
        model = payload.get("model") or FAKE_MODEL
        completion = {"id": "chatcmpl-fake", "created": 0, "model": model}
        if not payload.get("stream"):
            if config.malformed:
                return web.Response(body=b'{"choices": [', content_type="application/json")
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": "stop"}
            return json_response({**completion, "object": "chat.completion", "choices": [choice]})

        def event(delta: dict, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return b"data: " + orjson.dumps({**completion, "object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"

        # The role event goes with the first piece. A malformed stream is cut off after its
        # first piece: no finish event, no [DONE].
        words = [event({"content": word}) for word in pieces] or [b""]
        words[0] = event({"role": "assistant", "content": ""}) + words[0]
        ending = [event({}, "stop")]
        if (payload.get("stream_options") or {}).get("include_usage"):
            text = "".join(pieces)
            usage = {"prompt_tokens": token_count(prompt), "completion_tokens": token_count(text)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            ending.append(b"data: " + orjson.dumps({**completion, "object": "chat.completion.chunk", "choices": [], "usage": usage}) + b"\n\n")
        return await self.stream_events(request, [], words, [*ending, b"data: [DONE]\n\n"], config)

    async def answer_anthropic_messages(self, request, payload, config) -> web.StreamResponse:
        """Answer as the Messages API does, refusing what it refuses: no version header, no
        model, no max_tokens."""
        if not request.headers.get("anthropic-version"):
            return anthropic_error(400, "invalid_request_error", "anthropic-version: header is required")
        for field, wanted in (("model", str), ("max_tokens", int)):
            if not isinstance(payload.get(field), wanted):
                return anthropic_error(400, "invalid_request_error", f"{field}: Field required")
        prompt, image = chat_prompt(payload)
        text = answer_text(prompt, image)
        message = {
            "id": "msg_fake", "type": "message", "role": "assistant", "model": payload["model"],
            "stop_reason": None, "stop_sequence": None,
        }
        usage = {"input_tokens": len(words_of(prompt)), "output_tokens": len(words_of(text))}
        if not payload.get("stream"):
            if config.malformed:
                return web.Response(body=b'{"content": [', content_type="application/json")
            content = [{"type": "text", "text": text}]
            return json_response({**message, "content": content, "stop_reason": "end_turn", "usage": usage})

        def event(name: str, data: dict) -> bytes:
            return f"event: {name}\n".encode() + b"data: " + orjson.dumps({"type": name, **data}) + b"\n\n"

        events = [
            event("message_start", {"message": {**message, "content": [], "usage": {**usage, "output_tokens": 1}}}),
            event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            event("ping", {}),
        ]
        events += [
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}})
            for word in pieces_of(text, config.tokens)
        ]
        ending = [
            event("content_block_stop", {"index": 0}),
            event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage}),
            event("message_stop", {}),
        ]
        # A malformed stream is cut off after its first words: no message_stop.
        return await self.stream_events(request, events[:3], events[3:], ending, config)

    async def answer_tgi_generate(self, request, payload, config) -> web.StreamResponse:
        """Answer as text-generation-inference's root route does: one generation, or with
        `stream` a token per event, the last (the end-of-sequence token) carrying the whole text."""
        inputs = payload.get("inputs")
        if not isinstance(inputs, str):
            return json_response({"error": "inputs must be a string", "error_type": "validation"}, status=422)
        image = None
        inline = TGI_INLINE_IMAGE.match(inputs)
        if inline:
            image, inputs = inline.group(1), inputs[inline.end():]
        text = answer_text(inputs, image)
        if not payload.get("stream"):
            if config.malformed:
                return web.Response(body=b'[{"generated_text": ', content_type="application/json")
            return json_response([{"generated_text": text}])
        words = pieces_of(text, config.tokens)

        def event(index: int, token: str, *, special: bool = False, generated_text: str | None = None) -> bytes:
            data = {
                "index": index,
                "token": {"id": index, "text": token, "logprob": -0.5, "special": special},
                "generated_text": generated_text,
                "details": {"finish_reason": "eos_token", "generated_tokens": index} if generated_text is not None else None,
            }
            return b"data:" + orjson.dumps(data) + b"\n\n"

        events = [event(index, word) for index, word in enumerate(words, 1)]
        last = event(len(words) + 1, "</s>", special=True, generated_text=text)
        # A malformed stream is cut off after its first word, without the event carrying generated_text.
        return await self.stream_events(request, [], events, [last], config)

    async def stream_events(self, request, opening: list[bytes], pieces: list[bytes], ending: list[bytes], config) -> web.StreamResponse:
        """Stream server-sent events: the opening ones at once, the answer's pieces as the knobs
        pace them, then the ending ones; a malformed stream stops after its first piece."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for data in opening:
            await response.write(data)
        await self.write_pieces(response, pieces, config)
        if not config.malformed:
            for data in ending:
                await response.write(data)
        await response.write_eof()
        return response

    async def answer_openai_embeddings(self, request, payload, config) -> web.StreamResponse:
        inputs = embedding_inputs(payload)
        data = [{"object": "embedding", "index": index, "embedding": embedding_of(text)} for index, text in enumerate(inputs)]
        tokens = sum(token_count(text) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return json_response({"object": "list", "data": data, "model": payload.get("model") or FAKE_MODEL, "usage": usage})

    async def answer_ollama_embed(self, request, payload, config) -> web.StreamResponse:
        inputs = embedding_inputs(payload)
        return json_response({
            "model": payload.get("model") or FAKE_MODEL,
            "embeddings": [embedding_of(text) for text in inputs],
            "prompt_eval_count": sum(token_count(text) for text in inputs),
        })

    async def get_config(self, request: web.Request) -> web.Response:
        return json_response(dataclasses.asdict(self.config))

    async def post_config(self, request: web.Request) -> web.Response:
        try:
            knobs = orjson.loads(await request.read())
            if not isinstance(knobs, dict):
                raise ValueError("send a JSON object of knobs")
            config = self.configure(**knobs)
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise BadRequest(str(exc)) from exc
        return json_response(dataclasses.asdict(config))

    async def get_stats(self, request: web.Request) -> web.Response:
        return json_response(self.stats())

    async def delete_stats(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return json_response(self.stats())


def embedding_inputs(payload: dict) -> list[str]:
    """Return the texts of an embeddings request (OpenAI and Ollama both send `input`)."""
    raw = payload.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(text, str) for text in inputs):
        raise BadRequest("input must be a string or a non-empty list of strings")
    return inputs


class FakeServerThread:
    """A FakeModelServer on its own loop in a background thread, for sync pytest fixtures."""

    def __init__(self, server: FakeModelServer, loop: asyncio.AbstractEventLoop, thread: threading.Thread):
        self.server = server
        self.loop = loop
        self.thread = thread
        self.port = server.port
        self.url = server.url

    def on_server_loop(self, function, *args, **kwargs):
        """Run a server method on its loop and return the result, so state is never shared across threads."""

        async def run():
            return function(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    def configure(self, **knobs) -> FakeConfig:
        return self.on_server_loop(self.server.configure, **knobs)

    def stats(self) -> dict:
        return self.on_server_loop(self.server.stats)

    def reset_stats(self) -> None:
        self.on_server_loop(self.server.reset_stats)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def __enter__(self) -> FakeServerThread:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def run_in_thread(host: str = "127.0.0.1", port: int = 0, **knobs) -> FakeServerThread:
    """Start a fake server in a daemon thread and return once it is listening."""
    server = FakeModelServer(**knobs)
    started: concurrent.futures.Future[asyncio.AbstractEventLoop] = concurrent.futures.Future()

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start(host, port))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(server.stop())
            loop.close()

    thread = threading.Thread(target=serve, name=f"fake-model-server-{port}", daemon=True)
    thread.start()
    loop = started.result(timeout=10)
    return FakeServerThread(server, loop, thread)
