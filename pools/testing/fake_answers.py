"""What the fake model server answers, and the knobs that change how (pools/testing/fake_server.py
serves them): deterministic answers, so tests can assert on exactly what a user would see."""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import struct
import zlib

import orjson
from aiohttp import web

# Oversized answers go out in pieces, so the server never holds one either.
OVERSIZED_PIECE_BYTES = 64 * 1024
FAKE_MODEL = "fake"
FAKE_CREATED_AT = "2024-01-01T00:00:00Z"
WORDS = re.compile(r"\S+\s*|\s+")
# How a TGI vision model is shown an image: inline, as a markdown image before the prompt.
TGI_INLINE_IMAGE = re.compile(r"!\[\]\(data:image/[a-z]+;base64,([A-Za-z0-9+/=]*)\)")


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
    api_key: str = knob(
        "", 'when set, every route but /_fake/* wants "Authorization: Bearer <key>" (/v1/messages: "x-api-key: <key>")'
    )
    seed: int = knob(0, "seed of the failure draw, so --failure-rate gives the same sequence every run")
    tokens: int = knob(0, "when set, chat answers are this many pieces: the echo's words, then numbered fillers")
    token_delay: float = knob(0.0, "seconds between the pieces of a streamed answer")
    pause_after: int = knob(0, "when set, a streamed answer stops for --pause-seconds after this many pieces")
    pause_seconds: float = knob(0.0, "how long that pause lasts")

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
        negative = [name for name in ("delay", "oversized_bytes", "retry_after", "tokens", "token_delay", "pause_after",
                                      "pause_seconds") if getattr(config, name) < 0]
        if negative:
            raise ValueError(f"knobs {', '.join(map(repr, negative))} cannot be negative")
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


def anthropic_error(status: int, error_type: str, message: str) -> web.Response:
    """Return an error in the Messages API's own shape."""
    return json_response({"type": "error", "error": {"type": error_type, "message": message}}, status=status)


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


def embedding_of(text: str) -> list[float]:
    """Return a deterministic 8-number embedding of a text, so equal inputs embed equally."""
    return [round(byte / 255, 4) for byte in hashlib.sha256(text.encode()).digest()[:8]]


def token_count(text: str) -> int:
    """Return the fake tokenizer's count: one token a word."""
    return len(text.split())


def words_of(text: str) -> list[str]:
    """Split an answer into the chunks a streaming format sends: one word and its trailing space each."""
    return WORDS.findall(text)


def pieces_of(text: str, tokens: int) -> list[str]:
    """Return the pieces a chat answer is streamed in: its words, and with `tokens` set exactly
    that many (numbered fillers after the words, or the words cut short), so a benchmark
    chooses the answer's length and a test can tell any piece from the others."""
    words = words_of(text)
    if not tokens:
        return words
    if words and not words[-1].endswith(" "):
        words[-1] += " "
    return (words + [f"{n} " for n in range(len(words), tokens)])[:tokens]


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
    """Return the last message's text and image from an Ollama, OpenAI or Anthropic chat request."""
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
            elif part.get("type") == "image":
                image = (part.get("source") or {}).get("data") or None
        content = "".join(texts)
    return content, image
