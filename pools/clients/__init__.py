"""Model-server clients, one per wire format (docs/protocol.md §2), chosen by client_for()."""
from .a1111 import A1111Client
from .anthropic import AnthropicClient
from .base import CallLimits, ChunkCallback, ModelAnswer, ModelClient, ModelRequest, ModelServerError
from .huggingface import HuggingFaceClient
from .ollama import OllamaClient
from .openai import OpenAIClient
from .openai_audio import OpenAIAudioClient
from .predict import PredictClient

__all__ = [
    "CallLimits",
    "ChunkCallback",
    "ModelAnswer",
    "ModelClient",
    "ModelRequest",
    "ModelServerError",
    "client_for",
    "register_client",
]

# Clients hold no state, so one instance per format serves every worker and task.
CLIENTS: dict[str, ModelClient] = {
    client.wire_format: client
    for client in (
        PredictClient(), A1111Client(), OllamaClient(), OpenAIClient(), AnthropicClient(), HuggingFaceClient(),
        OpenAIAudioClient(),
    )
}


def register_client(client: ModelClient) -> None:
    """Add the client of a wire format another app speaks (the federation app's peer calls),
    from that app's `AppConfig.ready()`: pools imports no other app."""
    CLIENTS[client.wire_format] = client


def client_for(wire_format: str) -> ModelClient:
    """Return the client that speaks a worker's wire format (Worker.wire_format)."""
    try:
        return CLIENTS[wire_format]
    except KeyError:
        raise ValueError(
            f"unknown wire format {wire_format!r}; expected one of {', '.join(sorted(CLIENTS))}"
        ) from None
