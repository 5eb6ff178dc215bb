"""This broker's federation identity: its id, public base URL and Ed25519 key pair, and the
document it publishes at the well-known URL (current and retired public keys with validity,
as Matrix homeservers publish theirs).

The private key is read from `FEDERATION_PRIVATE_KEY` or else the key file, never from a
table: the admin shows only `SigningKey` rows, which hold public keys.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.utils import timezone

WELL_KNOWN_PATH = "/.well-known/rentahal/federation"

_loaded: dict[tuple, Ed25519PrivateKey] = {}


class MissingKey(Exception):
    """No private key is configured: `manage.py federation_keys create` writes one."""


def federation_id() -> str:
    return settings.RENTAHAL_FEDERATION_ID


def base_url() -> str:
    return settings.RENTAHAL_FEDERATION_BASE_URL.rstrip("/")


def key_file() -> Path:
    return Path(settings.RENTAHAL_FEDERATION_KEY_FILE)


def parse_private_key(text: str) -> Ed25519PrivateKey:
    """Read a PEM private key, or base64 of the 32-byte seed."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_private_key(text.encode(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise MissingKey("the federation key is not an Ed25519 key")
        return key
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text))


def private_key() -> Ed25519PrivateKey:
    """Return the current private key (the environment's, else the key file's), read once
    per process and again when the file changes (a rotation by another process)."""
    configured = settings.RENTAHAL_FEDERATION_PRIVATE_KEY
    if configured:
        source = ("env", configured)
    else:
        path = key_file()
        try:
            source = ("file", str(path), path.stat().st_mtime_ns)
        except FileNotFoundError:
            raise MissingKey(f"no federation key: set FEDERATION_PRIVATE_KEY or run manage.py federation_keys create ({path})") from None
    key = _loaded.get(source)
    if key is None:
        key = parse_private_key(configured or key_file().read_text())
        _loaded.clear()
        _loaded[source] = key
    return key


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def encode_public(key: Ed25519PublicKey) -> str:
    return base64.b64encode(raw_public(key)).decode()


def decode_public(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))


def key_id_of(public_key_b64: str) -> str:
    """Return a key's id: the start of the SHA-256 of its raw bytes, so it names one key only."""
    return hashlib.sha256(base64.b64decode(public_key_b64)).hexdigest()[:16]


def current_public_key() -> str:
    return encode_public(private_key().public_key())


def signing_key_id() -> str:
    """Return the `keyid` this broker signs with: `<federation id>#<key id>`."""
    return f"{federation_id()}#{key_id_of(current_public_key())}"


def new_private_key_pem() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return key, pem.decode()


def write_key_file(pem: str) -> Path:
    """Write the private key readable by this user only, replacing the file in one step."""
    path = key_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(pem)
    os.replace(temporary, path)
    return path


def published_keys(now: datetime.datetime | None = None) -> list[dict]:
    """Return the keys peers may verify us with: the current one, then retired ones not yet expired."""
    from federation.models import SigningKey

    now = now or timezone.now()
    current = current_public_key()
    keys = [{"key_id": key_id_of(current), "public_key": current, "valid_until": None}]
    for row in SigningKey.objects.filter(valid_until__gt=now).exclude(public_key=current):
        keys.append({"key_id": row.key_id, "public_key": row.public_key, "valid_until": row.valid_until.isoformat()})
    return keys


def well_known_document() -> dict:
    return {"federation_id": federation_id(), "base_url": base_url(), "keys": published_keys()}


def is_key_valid(entry: dict, now: datetime.datetime | None = None) -> bool:
    until = entry.get("valid_until")
    if not until:
        return True
    return datetime.datetime.fromisoformat(until) > (now or timezone.now())
