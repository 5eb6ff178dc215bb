"""What a /v1 request asks, validated: every field the door uses is checked here, and a
refusal names the field (`param` in OpenAI's error shape). Fields it does not use are
ignored, as OpenAI clients send many."""
import base64
import binascii
import dataclasses
import re

from django.conf import settings

from realms.frames import strip_data_url
from rentahal.errors import Invalid
from rentahal.query_types import QueryType

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "user"}
MAX_STOP_SEQUENCES = 4
# A request names its conversation with this header, else with the OpenAI `user` field.
CONVERSATION_HEADER = "X-Conversation-Id"
MAX_CONVERSATION_CHARS = 128
MAX_EMBEDDING_INPUTS = 256
SIZE = re.compile(r"^(\d{2,4})x(\d{2,4})$")
# The first bytes of the image formats vision models take.
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def refuse(field: str, message: str) -> Invalid:
    return Invalid(f"{field}: {message}", fields={field: [message]})


def text_field(body: dict, field: str, *, required: bool = True, default: str = "") -> str:
    value = body.get(field)
    if value is None:
        if required:
            raise refuse(field, "This field is required.")
        return default
    if not isinstance(value, str) or "\x00" in value:
        raise refuse(field, "Must be a string without NUL characters.")
    return value


def whole_number(body: dict, field: str, *, low: int, high: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise refuse(field, f"Must be a whole number from {low} to {high}.")
    return value


def require_one_choice(body: dict) -> None:
    if whole_number(body, "n", low=1, high=128) not in (None, 1):
        raise refuse("n", "Only n=1 is served: each request is one query, answered once.")


def image_of(url: str, field: str) -> str:
    """Return the base64 of an image sent as a data URL, refusing anything that is not one."""
    if not url.startswith("data:image/") or ";base64," not in url:
        raise refuse(field, "Send images as data:image/...;base64 URLs; the broker fetches no URLs.")
    payload = strip_data_url(url)
    try:
        head = base64.b64decode(payload[:24], validate=True)
    except (binascii.Error, ValueError):
        raise refuse(field, "The image is not valid base64.") from None
    if not (head.startswith(IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
        raise refuse(field, "The data is not a PNG, JPEG, GIF, WebP or BMP image.")
    return payload


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict]
    prompt: str
    image: str
    options: dict
    stream: bool
    include_usage: bool

    @property
    def prompt_text(self) -> str:
        return "".join(message["content"] for message in self.messages)

    def query_fields(self) -> dict:
        return {
            "prompt": self.prompt,
            "query_type": QueryType.VISION if self.image else QueryType.CHAT,
            "image": self.image,
            "options": self.options,
        }


def parse_messages(raw) -> tuple[list[dict], str]:
    """Return the conversation as text messages, and the last image in it (base64, or "")."""
    if not isinstance(raw, list) or not raw:
        raise refuse("messages", "Must be a non-empty list of messages.")
    messages, image = [], ""
    for index, message in enumerate(raw):
        field = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise refuse(field, f"Each message is an object whose role is one of {', '.join(ROLES)}.")
        content = message.get("content")
        if content is None:
            content = ""
        if isinstance(content, list):
            texts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "image_url":
                    url = part.get("image_url")
                    url = url.get("url") if isinstance(url, dict) else url
                    if not isinstance(url, str):
                        raise refuse(f"{field}.content", "An image_url part needs a url.")
                    image = image_of(url, f"{field}.content")
                else:
                    raise refuse(f"{field}.content", "Content parts are text or image_url.")
            content = "".join(texts)
        if not isinstance(content, str) or "\x00" in content:
            raise refuse(f"{field}.content", "Must be text or a list of content parts.")
        messages.append({"role": ROLES[message["role"]], "content": content})
    if sum(len(message["content"]) for message in messages) > settings.RENTAHAL_MAX_PROMPT_CHARS:
        raise refuse("messages", f"The conversation is over {settings.RENTAHAL_MAX_PROMPT_CHARS} characters.")
    return messages, image


def parse_chat(body: dict, *, conversation_header: str | None = None) -> ChatRequest:
    model = text_field(body, "model")
    messages, image = parse_messages(body.get("messages"))
    users = [message for message in messages if message["role"] == "user"]
    if not users:
        raise refuse("messages", "The conversation needs a user message.")
    prompt = users[-1]["content"]
    if not prompt.strip() and not image:
        raise refuse("messages", "The last user message is empty.")
    require_one_choice(body)
    options: dict = {"messages": messages}
    max_tokens = whole_number(body, "max_completion_tokens", low=1, high=1_000_000)
    if max_tokens is None:
        max_tokens = whole_number(body, "max_tokens", low=1, high=1_000_000)
    if max_tokens is not None:
        options["max_tokens"] = max_tokens
    temperature = body.get("temperature")
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
            raise refuse("temperature", "Must be a number from 0 to 2.")
        options["temperature"] = temperature
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
            raise refuse("stop", f"Must be a string or a list of at most {MAX_STOP_SEQUENCES} strings.")
        options["stop"] = stop
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise refuse("stream", "Must be true or false.")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict) or not isinstance(stream_options.get("include_usage", False), bool):
        raise refuse("stream_options", "Must be an object whose include_usage is true or false.")
    if stream:
        # The worker watches for a client that left only on streamed queries (realms.lifecycle).
        options["stream"] = True
    conversation = conversation_header or body.get("user") or ""
    if not isinstance(conversation, str):
        raise refuse("user", "Must be a string.")
    if conversation:
        # The conversation a request names: `X-Conversation-Id`, else the OpenAI `user` field.
        options["conversation"] = conversation[:MAX_CONVERSATION_CHARS]
    return ChatRequest(
        model=model,
        messages=messages,
        prompt=prompt,
        image=image,
        options=options,
        stream=stream,
        include_usage=bool(stream_options.get("include_usage")),
    )


@dataclasses.dataclass(frozen=True)
class ImageRequest:
    model: str
    prompt: str
    response_format: str
    options: dict

    def query_fields(self) -> dict:
        return {"prompt": self.prompt, "query_type": QueryType.IMAGINE, "image": "", "options": self.options}


def parse_image(body: dict) -> ImageRequest:
    prompt = text_field(body, "prompt")
    if not prompt.strip() or len(prompt) > settings.RENTAHAL_MAX_PROMPT_CHARS:
        raise refuse("prompt", f"Must be 1 to {settings.RENTAHAL_MAX_PROMPT_CHARS} characters.")
    require_one_choice(body)
    response_format = text_field(body, "response_format", required=False, default="b64_json")
    if response_format not in ("b64_json", "url"):
        raise refuse("response_format", "Must be b64_json or url (a data: URL).")
    options = {}
    size = text_field(body, "size", required=False)
    if size and size != "auto":
        match = SIZE.match(size)
        width, height = (int(match[1]), int(match[2])) if match else (0, 0)
        if not (64 <= width <= 2048 and 64 <= height <= 2048):
            raise refuse("size", "Must be WIDTHxHEIGHT, each from 64 to 2048, e.g. 512x512.")
        options = {"width": width, "height": height}
    return ImageRequest(text_field(body, "model", required=False), prompt, response_format, options)


@dataclasses.dataclass(frozen=True)
class EmbeddingsRequest:
    model: str
    inputs: list[str]
    encoding_format: str

    def query_fields(self) -> dict:
        options = {"task": "embed", "input": self.inputs}
        return {"prompt": self.inputs[0], "query_type": QueryType.CHAT, "image": "", "options": options}


def parse_embeddings(body: dict) -> EmbeddingsRequest:
    model = text_field(body, "model")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if (
        not isinstance(inputs, list)
        or not 1 <= len(inputs) <= MAX_EMBEDDING_INPUTS
        or not all(isinstance(text, str) and text and "\x00" not in text for text in inputs)
    ):
        raise refuse("input", f"Must be a non-empty string or a list of 1 to {MAX_EMBEDDING_INPUTS} such strings.")
    if sum(len(text) for text in inputs) > settings.RENTAHAL_MAX_PROMPT_CHARS:
        raise refuse("input", f"The input is over {settings.RENTAHAL_MAX_PROMPT_CHARS} characters.")
    encoding_format = text_field(body, "encoding_format", required=False, default="float")
    if encoding_format not in ("float", "base64"):
        raise refuse("encoding_format", "Must be float or base64.")
    return EmbeddingsRequest(model, inputs, encoding_format)
