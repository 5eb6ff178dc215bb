"""Routes of the HTTP doors: /v1 (OpenAI-compatible) and the classic REST routes, and where
rentahal.urls mounts them (`rentahal.asgi` sends those paths to the doors' own handler)."""
from django.urls import path

from realms.doors import classic, openai

v1_patterns = [
    path("chat/completions", openai.chat_completions, name="v1-chat-completions"),
    path("models", openai.list_models, name="v1-models"),
    path("models/<path:model>", openai.retrieve_model, name="v1-model"),
    path("images/generations", openai.image_generations, name="v1-image-generations"),
    path("embeddings", openai.embeddings, name="v1-embeddings"),
]

classic_patterns = [
    path("chat", classic.chat, name="classic-chat"),
    path("vision", classic.vision, name="classic-vision"),
    path("imagine", classic.imagine, name="classic-imagine"),
    path("whisper", classic.whisper, name="classic-whisper"),
    path("bark", classic.bark, name="classic-bark"),
]

V1_PREFIX = "v1/"
CLASSIC_PREFIX = "api/"
CLASSIC_PATHS = frozenset(f"/{CLASSIC_PREFIX}{pattern.pattern}" for pattern in classic_patterns)


def is_door_path(path: str) -> bool:
    """Whether an HTTP request's path is one of the doors' (a program's, with an API key)."""
    return path.startswith(f"/{V1_PREFIX}") or path in CLASSIC_PATHS
