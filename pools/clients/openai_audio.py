"""OpenAI's audio routes (OpenAI itself, faster-whisper and Piper servers such as
`manage.py serve_speech_to_text` / `serve_text_to_speech`, LocalAI, Speaches):
POST /v1/audio/transcriptions (multipart) turns audio into text, POST /v1/audio/speech
turns text into audio."""
from __future__ import annotations

import base64

import aiohttp

from .base import (
    CallLimits,
    ChunkCallback,
    ModelAnswer,
    ModelClient,
    ModelRequest,
    bearer_headers,
    malformed,
    post_for_answer,
    probe_status,
)

# OpenAI's names, sent when the worker names no model: its own servers need one.
DEFAULT_TRANSCRIBE_MODEL = "whisper-1"
DEFAULT_SPEAK_MODEL = "tts-1"
DEFAULT_VOICE = "alloy"


class OpenAIAudioClient(ModelClient):
    """A request with audio is transcribed (a text answer); one without is spoken (a base64
    WAV answer). Which servers do which is the pool's business: the speech realm's pools
    (`realms.speech`) hold transcribers and speakers apart."""

    wire_format = "openai_audio"

    async def call(
        self,
        session: aiohttp.ClientSession,
        worker,
        request: ModelRequest,
        *,
        limits: CallLimits,
        on_chunk: ChunkCallback | None = None,
    ) -> ModelAnswer:
        if request.audio is not None:
            return await self.transcribe(session, worker, request, limits=limits)
        return await self.speak(session, worker, request, limits=limits)

    async def transcribe(self, session, worker, request: ModelRequest, *, limits: CallLimits) -> ModelAnswer:
        audio_format = request.audio_format or "wav"
        form = aiohttp.FormData()
        form.add_field("file", base64.b64decode(request.audio), filename=f"audio.{audio_format}", content_type=f"audio/{audio_format}")
        form.add_field("model", worker.model or DEFAULT_TRANSCRIBE_MODEL)
        form.add_field("response_format", "json")
        async with post_for_answer(
            session, worker, "/v1/audio/transcriptions", form, limits=limits, headers=bearer_headers(worker)
        ) as body:
            data = await body.json()
            text = data.get("text") if isinstance(data, dict) else None
            if not isinstance(text, str):
                raise malformed(worker, "the transcription has no 'text'")
            return ModelAnswer(result=text, result_type="text", time_to_first_byte=body.time_to_first_byte)

    async def speak(self, session, worker, request: ModelRequest, *, limits: CallLimits) -> ModelAnswer:
        payload = {
            "model": worker.model or DEFAULT_SPEAK_MODEL,
            "input": request.prompt,
            "voice": DEFAULT_VOICE,
            "response_format": "wav",
        }
        async with post_for_answer(
            session, worker, "/v1/audio/speech", payload, limits=limits, headers=bearer_headers(worker)
        ) as body:
            audio = await body.read()
            if not audio.startswith(b"RIFF"):
                raise malformed(worker, "the speech is not a WAV file")
            return ModelAnswer(
                result=base64.b64encode(audio).decode(), result_type="audio", time_to_first_byte=body.time_to_first_byte
            )

    async def probe(self, session: aiohttp.ClientSession, worker, *, timeout: float) -> int | None:
        return await probe_status(session, worker, "/v1/models", timeout=timeout, headers=bearer_headers(worker))
