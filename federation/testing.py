"""Test helpers: a peer broker persona (its Ed25519 key, its row here, and requests signed
as it) for tests that talk to this broker's federation endpoints in-process."""
from __future__ import annotations

import base64
import dataclasses

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.test import override_settings

from federation import identity, signing
from federation.models import Peer


def new_key_b64() -> str:
    """Return a fresh private key as FEDERATION_PRIVATE_KEY takes it (base64 of the seed)."""
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed).decode()


def public_of(private_b64: str) -> str:
    return identity.encode_public(identity.parse_private_key(private_b64).public_key())


@dataclasses.dataclass
class PeerPersona:
    federation_id: str
    private_key: str
    base_url: str = "http://127.0.0.1:9"
    row: Peer | None = None

    @property
    def public_key(self) -> str:
        return public_of(self.private_key)

    @property
    def key_entry(self) -> dict:
        return {"key_id": identity.key_id_of(self.public_key), "public_key": self.public_key, "valid_until": None}

    def as_self(self):
        """Settings under which `federation.signing.sign_request` signs as this peer."""
        return override_settings(
            RENTAHAL_FEDERATION_ID=self.federation_id,
            RENTAHAL_FEDERATION_PRIVATE_KEY=self.private_key,
            RENTAHAL_FEDERATION_BASE_URL=self.base_url,
        )

    def sign(self, method: str, url: str, body: bytes) -> dict[str, str]:
        with self.as_self():
            return signing.sign_request(method, url, body)


def make_peer(federation_id: str = "peer-b", *, status: str = Peer.Status.ACTIVE, **fields) -> PeerPersona:
    persona = PeerPersona(federation_id, new_key_b64())
    persona.row = Peer.objects.create(
        federation_id=federation_id, base_url=persona.base_url, keys=[persona.key_entry], status=status, **fields
    )
    return persona
