"""Validation of client frames: what a well-formed `submit_query` looks like."""
import base64
import binascii
import dataclasses

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
    # From the HTTP doors (realms.doors): what the model server is asked beyond the prompt
    # (accounts.Query.options), and the API key the query is billed under.
    options: dict = dataclasses.field(default_factory=dict)
    api_key: int | None = None


def require_str(data: dict, field: str, *, required: bool = True, default: str = "") -> str:
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


MAX_IDEMPOTENCY_KEY_CHARS = 128


def parse_idempotency_key(key: object) -> str:
    """Return the client's id for a submission (docs/protocol.md §1), or "" when it sent none."""
    if key is None:
        return ""
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise BrokerError(
            f"Field 'idempotency_key' must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters.", code="bad_field"
        )
    return key


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
    if not prompt.strip() and query_type != QueryType.VISION:
        raise BrokerError("Prompt is empty.", code="missing_field")
    return QuerySubmission(
        prompt=prompt,
        query_type=query_type,
        model_type=model_type,
        model_name=require_str(query, "model_name", required=False)[:128],
        image=strip_data_url(image) if image else "",
        idempotency_key=parse_idempotency_key(idempotency_key),
    )
