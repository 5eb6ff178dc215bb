"""Validation of client frames: what a well-formed `submit_query` looks like."""
import base64
import binascii
import dataclasses
import io
import wave

from django.conf import settings

from rentahal.errors import BrokerError
from rentahal.query_types import QueryType

MODEL_TYPES = frozenset({"worker_node", "huggingface", "claude", "speech"})


@dataclasses.dataclass(frozen=True)
class QuerySubmission:
    prompt: str
    query_type: str
    model_type: str
    model_name: str
    image: str
    idempotency_key: str = ""
    audio: str = ""
    audio_format: str = ""
    speech_task: str = ""
    # From the HTTP doors (realms.doors): what the model server is asked beyond the prompt
    # (accounts.Query.options), and the API key the query is billed under.
    options: dict = dataclasses.field(default_factory=dict)
    api_key: int | None = None


def require_str(data: dict, field: str, *, required: bool = True, default: str | None = "") -> str | None:
    value = data.get(field, None)
    if value is None:
        if required:
            raise BrokerError(f"Missing field '{field}'.", code="missing_field")
        return default
    if not isinstance(value, str):
        raise BrokerError(f"Field '{field}' must be a string.", code="bad_field")
    if "\x00" in value:
        # Postgres text cannot hold NUL; refused here, before any row is written.
        raise BrokerError(f"Field '{field}' must not contain NUL characters.", code="bad_field")
    return value


def strip_data_url(image: str) -> str:
    """Return the base64 payload of an image, accepting a data: URL as browsers send it,
    and refuse one over RENTAHAL_MAX_IMAGE_BYTES: the image is kept in the query's row."""
    payload = image.split(",", 1)[1] if image.startswith("data:") else image
    try:
        size = len(base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError):
        raise BrokerError("Field 'image' is not valid base64.", code="bad_field") from None
    if size > settings.RENTAHAL_MAX_IMAGE_BYTES:
        raise BrokerError(
            f"The image is {size} bytes; the limit is {settings.RENTAHAL_MAX_IMAGE_BYTES} bytes.", code="image_too_large"
        )
    return payload


# What the speech realm takes (docs/protocol.md §1): the original's recordings were WebM
# (the browser's MediaRecorder) or WAV; each is known by its first bytes.
AUDIO_SIGNATURES = {"wav": (b"RIFF", b"WAVE"), "webm": (b"\x1a\x45\xdf\xa3", None)}
# OpenAI's limit on one /v1/audio/speech text, which any speech server of that format keeps.
MAX_SPEECH_TEXT_CHARS = 4096


def audio_format_of(audio: bytes) -> str:
    """Return "wav" or "webm" from the file's signature, or refuse anything else."""
    for audio_format, (magic, form) in AUDIO_SIGNATURES.items():
        if audio.startswith(magic) and (form is None or audio[8:12] == form):
            return audio_format
    raise BrokerError("Audio must be a WAV or WebM recording.", code="unsupported_audio")


def wav_seconds(audio: bytes) -> float:
    """Return how long a WAV file plays, read from its header, or refuse a broken one."""
    try:
        with wave.open(io.BytesIO(audio)) as wav:
            return wav.getnframes() / wav.getframerate()
    except (wave.Error, EOFError, ZeroDivisionError):
        raise BrokerError("The WAV file is damaged or holds no audio.", code="unsupported_audio") from None


def parse_audio(value: object) -> tuple[str, str]:
    """Return the base64 payload of a recording (a data: URL accepted) and its format, or
    refuse it: not base64, larger than RENTAHAL_MAX_AUDIO_BYTES, neither WAV nor WebM, or a
    WAV longer than RENTAHAL_MAX_AUDIO_SECONDS (a WebM's length is only known once decoded:
    the speech-to-text server refuses one that is too long, and nothing is charged)."""
    if not isinstance(value, str) or not value:
        raise BrokerError("A speech query needs its 'audio' (base64 WAV or WebM).", code="missing_field")
    payload = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BrokerError("Field 'audio' is not valid base64.", code="bad_field") from None
    if len(audio) > settings.RENTAHAL_MAX_AUDIO_BYTES:
        raise BrokerError(
            f"The audio is {len(audio)} bytes; the limit is {settings.RENTAHAL_MAX_AUDIO_BYTES} bytes.", code="audio_too_large"
        )
    audio_format = audio_format_of(audio)
    if audio_format == "wav":
        seconds = wav_seconds(audio)
        if seconds > settings.RENTAHAL_MAX_AUDIO_SECONDS:
            raise BrokerError(
                f"The audio lasts {seconds:.1f} s; the limit is {settings.RENTAHAL_MAX_AUDIO_SECONDS:g} s.", code="audio_too_long"
            )
    return payload, audio_format


def parse_speech_to_text(content: dict) -> QuerySubmission:
    """Return the speech query a `speech_to_text` frame asks for: transcription only."""
    audio, audio_format = parse_audio(content.get("audio"))
    return QuerySubmission(
        prompt="", query_type=QueryType.SPEECH, model_type="speech", model_name="", image="",
        audio=audio, audio_format=audio_format, speech_task="transcribe",
    )


def parse_text_to_speech(content: dict) -> QuerySubmission:
    """Return the speech query a `text_to_speech` frame asks for: its `text` spoken."""
    text = require_str(content, "text")
    if not text.strip():
        raise BrokerError("Field 'text' is empty.", code="missing_field")
    if len(text) > MAX_SPEECH_TEXT_CHARS:
        raise BrokerError(f"Text is {len(text)} characters; the limit is {MAX_SPEECH_TEXT_CHARS}.", code="prompt_too_long")
    return QuerySubmission(
        prompt=text, query_type=QueryType.SPEECH, model_type="speech", model_name="", image="", speech_task="speak"
    )


MAX_CLIENT_ID_CHARS = 128


def parse_client_id(value: object, field: str) -> str:
    """Return an id the client chose (`idempotency_key`, `conversation_id`; docs/protocol.md §1),
    or "" when it sent none."""
    if value is None:
        return ""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_CLIENT_ID_CHARS or not value.isprintable():
        raise BrokerError(f"Field '{field}' must be 1 to {MAX_CLIENT_ID_CHARS} printable characters.", code="bad_field")
    return value


def parse_submission(query: object, *, idempotency_key: object = None) -> QuerySubmission:
    """Return the validated query of a `submit_query` frame, or raise BrokerError naming the problem."""
    if not isinstance(query, dict):
        raise BrokerError("Field 'query' must be an object.", code="bad_field")
    prompt = require_str(query, "prompt")
    if len(prompt) > settings.RENTAHAL_MAX_PROMPT_CHARS:
        raise BrokerError(
            f"Prompt is {len(prompt)} characters; the limit is {settings.RENTAHAL_MAX_PROMPT_CHARS}.",
            code="prompt_too_long",
        )
    query_type = require_str(query, "query_type")
    if query_type not in QueryType.values:
        raise BrokerError(
            f"Unknown query type '{query_type}'; expected one of {', '.join(QueryType.values)}.",
            code="unknown_query_type",
        )
    model_type = require_str(query, "model_type", required=False, default="worker_node")
    if model_type not in MODEL_TYPES:
        raise BrokerError(f"Unknown model type '{model_type}'.", code="unknown_model_type")
    image = require_str(query, "image", required=False)
    if query_type == QueryType.VISION and not image:
        raise BrokerError("A vision query needs an 'image'.", code="missing_field")
    audio = audio_format = speech_task = ""
    if query_type == QueryType.SPEECH:
        audio, audio_format = parse_audio(query.get("audio"))
        result_type = require_str(query, "result_type", required=False, default="text")
        if result_type not in ("text", "audio"):
            raise BrokerError("Field 'result_type' of a speech query is text or audio.", code="bad_field")
        speech_task = "answer_aloud" if result_type == "audio" else "answer"
    elif not prompt.strip() and query_type != QueryType.VISION:
        raise BrokerError("Prompt is empty.", code="missing_field")
    return QuerySubmission(
        prompt=prompt,
        query_type=query_type,
        model_type=model_type,
        model_name=require_str(query, "model_name", required=False)[:128],
        image=strip_data_url(image) if image else "",
        idempotency_key=parse_client_id(idempotency_key, "idempotency_key"),
        audio=audio,
        audio_format=audio_format,
        speech_task=speech_task,
    )
