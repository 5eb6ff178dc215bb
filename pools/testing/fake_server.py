"""A fake model server speaking every wire format of docs/protocol.md §2 on one port, with knobs for
delay and failure: the one seam tests and benchmarks put between rentahal and real models."""
from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import dataclasses
import hashlib
import random
import re
import struct
import threading
import zlib

import orjson
from aiohttp import web

# Oversized answers go out in pieces, so the server never holds one either.
OVERSIZED_PIECE_BYTES = 64 * 1024
FAKE_MODEL = "fake"
FAKE_CREATED_AT = "2024-01-01T00:00:00Z"
WORDS = re.compile(r"\S+\s*|\s+")


def knob(default, help_text: str):
    """Declare a FakeConfig field with the help text the management command shows for it."""
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    """How the fake server behaves; every field is a knob of the same name."""

    delay: float = knob(0.0, "seconds to wait before answering a model route")
    failure_rate: float = knob(0.0, "probability (0..1) that a model route answers --fail-status")
    fail_status: int = knob(500, "HTTP status of a failure")
    fail_message: str = knob("", 'the "error" text of a failure; blank says "fake failure (HTTP <status>)"')
    retry_after: float = knob(1.0, "Retry-After seconds sent with a 429 failure")
    hang: bool = knob(False, "accept model requests and never answer")
    reset: bool = knob(False, "read model requests, then drop the connection without a word")
    oversized_bytes: int = knob(0, "when set, answer model routes with a body this many bytes long")
    malformed: bool = knob(False, "answer invalid JSON, or a stream cut off before its end marker")
    health_status: int = knob(200, "HTTP status of /health, /api/tags and /v1/models")
    redirect_to: str = knob("", "when set, answer model and health routes with a 307 redirect to this URL")
    api_key: str = knob("", 'when set, every route but /_fake/* wants "Authorization: Bearer <key>"')
    seed: int = knob(0, "seed of the failure draw, so --failure-rate gives the same sequence every run")

    def updated(self, knobs: dict) -> FakeConfig:
        """Return a copy with `knobs` applied; raise ValueError naming any bad knob."""
        types = {field.name: type(field.default) for field in dataclasses.fields(self)}
        for name, value in knobs.items():
            if name not in types:
                raise ValueError(f"unknown knob {name!r}; knobs are {', '.join(types)}")
            wanted = types[name]
            accepted = (int, float) if wanted is float else (wanted,)
            # bool is an int to Python, but a status code or byte count of True is a mistake.
            if not isinstance(value, accepted) or (isinstance(value, bool) and wanted is not bool):
                raise ValueError(f"knob {name!r} must be {wanted.__name__}, not {value!r}")
        config = dataclasses.replace(self, **knobs)
        if not 0.0 <= config.failure_rate <= 1.0:
            raise ValueError("knob 'failure_rate' must be between 0 and 1")
        if config.delay < 0 or config.oversized_bytes < 0 or config.retry_after < 0:
            raise ValueError("knobs 'delay', 'oversized_bytes' and 'retry_after' cannot be negative")
        for name in ("fail_status", "health_status"):
            if not 100 <= getattr(config, name) <= 599:
                raise ValueError(f"knob {name!r} must be an HTTP status code")
        return config


class BadRequest(web.HTTPBadRequest):
    """A request the real server would refuse too, answered as JSON {"error": ...}."""

    def __init__(self, message: str):
        super().__init__(text=orjson.dumps({"error": message}).decode(), content_type="application/json")


def json_response(data, *, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers, content_type="application/json")


def redirect_response(location: str) -> web.Response:
    """Return a 307, the redirect that asks a client to repeat its POST, body and all, elsewhere."""
    return json_response({"error": f"moved to {location}"}, status=307, headers={"Location": location})


def answer_text(prompt, image: str | None) -> str:
    """Return the deterministic answer to a prompt, naming the image size so tests see it arrived."""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    if image is None:
        return f"echo: {prompt}"
    try:
        size = len(base64.b64decode(image, validate=True))
    except (binascii.Error, TypeError, ValueError) as exc:
        raise BadRequest(f"image is not base64: {exc}") from exc
    return f"echo: {prompt} [image: {size} bytes]"


def words_of(text: str) -> list[str]:
    """Split an answer into the chunks a streaming format sends: one word and its trailing space each."""
    return WORDS.findall(text)


def png_for(text: str) -> bytes:
    """Return a tiny valid PNG whose colour depends on the text, so equal prompts give equal images."""
    red, green, blue = hashlib.sha256(text.encode()).digest()[:3]
    side = 8
    rows = b"".join(b"\x00" + bytes((red, green, blue)) * side for _ in range(side))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def chat_prompt(payload: dict) -> tuple[str, str | None]:
    """Return the last message's text and image from an Ollama or OpenAI chat request."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        raise BadRequest("messages must be a non-empty list of objects")
    content = messages[-1].get("content")
    images = messages[-1].get("images")
    image = images[0] if isinstance(images, list) and images else None
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict):
                raise BadRequest("content parts must be objects")
            if part.get("type") == "text":
                texts.append(part.get("text", ""))
            elif part.get("type") == "image_url":
                url = (part.get("image_url") or {}).get("url", "")
                image = url.partition("base64,")[2] or None
        content = "".join(texts)
    return content, image


class FakeModelServer:
    """An aiohttp server answering /predict, txt2img, Ollama and OpenAI routes from one port."""

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
        site = web.TCPSite(self._runner, host, port)
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
        return not config.api_key or request.headers.get("Authorization") == f"Bearer {config.api_key}"

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
        text = answer_text(payload.get("prompt"), payload.get("image"))
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
        text = answer_text(prompt, image)
        model = payload.get("model") or FAKE_MODEL
        if payload.get("stream") is False:
            message = {"role": "assistant", "content": text}
            return json_response({"model": model, "created_at": FAKE_CREATED_AT, "message": message, "done": True})
        lines = [
            {"model": model, "created_at": FAKE_CREATED_AT, "message": {"role": "assistant", "content": word}, "done": False}
            for word in words_of(text)
        ]
        last = {"model": model, "created_at": FAKE_CREATED_AT, "message": {"role": "assistant", "content": ""}, "done": True}
        return await self.stream_ndjson(request, lines, last, config)

    async def answer_ollama_generate(self, request, payload, config) -> web.StreamResponse:
        text = answer_text(payload.get("prompt"), (payload.get("images") or [None])[0])
        model = payload.get("model") or FAKE_MODEL
        if payload.get("stream") is False:
            return json_response({"model": model, "created_at": FAKE_CREATED_AT, "response": text, "done": True})
        lines = [
            {"model": model, "created_at": FAKE_CREATED_AT, "response": word, "done": False} for word in words_of(text)
        ]
        last = {"model": model, "created_at": FAKE_CREATED_AT, "response": "", "done": True}
        return await self.stream_ndjson(request, lines, last, config)

    async def stream_ndjson(self, request, lines: list[dict], last: dict, config) -> web.StreamResponse:
        """Stream Ollama's NDJSON; a malformed stream stops after its first line, never saying done."""
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in lines[:1] if config.malformed else [*lines, last]:
            await response.write(orjson.dumps(line) + b"\n")
        await response.write_eof()
        return response

    async def answer_openai_chat(self, request, payload, config) -> web.StreamResponse:
        prompt, image = chat_prompt(payload)
        text = answer_text(prompt, image)
        model = payload.get("model") or FAKE_MODEL
        completion = {"id": "chatcmpl-fake", "created": 0, "model": model}
        if not payload.get("stream"):
            if config.malformed:
                return web.Response(body=b'{"choices": [', content_type="application/json")
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            return json_response({**completion, "object": "chat.completion", "choices": [choice]})

        def event(delta: dict, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return b"data: " + orjson.dumps({**completion, "object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"

        events = [event({"role": "assistant", "content": ""})]
        events += [event({"content": word}) for word in words_of(text)]
        # A malformed stream is cut off after its first words: no finish event, no [DONE].
        events = events[:2] if config.malformed else [*events, event({}, "stop"), b"data: [DONE]\n\n"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for data in events:
            await response.write(data)
        await response.write_eof()
        return response

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
