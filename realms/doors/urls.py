"""Routes of the HTTP doors: /v1 (OpenAI-compatible) and the classic REST routes."""
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
