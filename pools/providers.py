"""Hosted providers (the Anthropic Messages API, Hugging Face text-generation-inference): the
classic model types that name one, and where a worker's provider key comes from.

Imports no model, so the clients and the models both read the one rule."""
from __future__ import annotations

from django.conf import settings

from rentahal.errors import BrokerError

# The classic model types that name a hosted provider (docs/protocol.md §1): a query of one
# of these is served only by workers of that wire format, never by a local model.
HOSTED_WIRE_FORMATS = {"claude": "anthropic", "huggingface": "huggingface"}

# The environment variable (and the setting it fills) that holds each provider's key for
# workers registered without one of their own.
KEY_VARIABLES = {"anthropic": "ANTHROPIC_API_KEY", "huggingface": "HF_TOKEN"}


def provider_key(wire_format: str, api_key: str) -> str:
    """Return the key to call a worker with: its own, else its provider's from the environment."""
    if api_key or wire_format not in KEY_VARIABLES:
        return api_key
    return getattr(settings, f"RENTAHAL_{KEY_VARIABLES[wire_format]}")


def missing_key_message(wire_format: str) -> str:
    return f"No API key for {wire_format}: give the worker its key, or set {KEY_VARIABLES[wire_format]} in the environment."


class MissingProviderKey(BrokerError):
    """A hosted model type was asked for, but none of its workers has a key to call with."""

    code = "missing_provider_key"
    http_status = 503
