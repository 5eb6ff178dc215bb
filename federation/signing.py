"""Is this peer request genuine: RFC 9421 HTTP Message Signatures (the
`http-message-signatures` package, Ed25519) over the method, the target URI and the
`Content-Digest` of the body, with `created`, a nonce and the key id. Both directions of
every peer call use these two functions.

`verify_request` refuses (`BadSignature`, 401) a missing or broken signature, a changed
body, path or method, a `created` more than the window away from now either way, a key it
cannot resolve to an active peer's valid key, and a nonce seen inside the window (kept in
Redis). The nonce is remembered only after the signature verified, so a forgery cannot burn
a genuine request's nonce. Ed25519 verification and the digest comparison
(`hmac.compare_digest`) take constant time.
"""
from __future__ import annotations

import dataclasses
import datetime
import secrets
from collections.abc import Callable, Mapping

from django.conf import settings
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, algorithms
from http_message_signatures.exceptions import HTTPMessageSignaturesException
from http_message_signatures.resolvers import HTTPSignatureKeyResolver
from rest_framework.exceptions import AuthenticationFailed

from federation import identity
from pools.state import client as redis_client
from rentahal.errors import BrokerError

COVERED = ("@method", "@target-uri", "content-digest")
SIGNATURE_LABEL = "rentahal"
TAG = "rentahal-federation"
NONCE_PREFIX = "federation:nonce:"


class BadSignature(BrokerError, AuthenticationFailed):
    """A peer request that is not proven to come from an active peer, unchanged and fresh.

    Also DRF's AuthenticationFailed, so the 401 carries `WWW-Authenticate: Signature`.
    """

    code = "bad_signature"
    http_status = 401


@dataclasses.dataclass
class Message:
    """The request as the signature library reads it."""

    method: str
    url: str
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Verified:
    federation_id: str
    key_id: str
    nonce: str


class OwnKey(HTTPSignatureKeyResolver):
    def resolve_private_key(self, key_id: str):
        return identity.private_key()

    def resolve_public_key(self, key_id: str):
        return identity.private_key().public_key()


class LookupKey(HTTPSignatureKeyResolver):
    """Resolve `<federation id>#<key id>` through `lookup`, which returns the base64 key or None."""

    def __init__(self, lookup: Callable[[str, str], str | None]):
        self.lookup = lookup

    def resolve_public_key(self, key_id: str):
        federation_id, _, kid = key_id.partition("#")
        public_key = self.lookup(federation_id, kid) if federation_id and kid else None
        if public_key is None:
            raise BadSignature("The signing key is unknown, expired, or not an active peer's.")
        return identity.decode_public(public_key)

    def resolve_private_key(self, key_id: str):
        raise HTTPMessageSignaturesException("verification only")


def sign_request(method: str, url: str, body: bytes) -> dict[str, str]:
    """Return the headers (Content-Digest, Signature-Input, Signature) that sign the request."""
    message = Message(method.upper(), url, {})
    HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=OwnKey()).sign(
        message,
        key_id=identity.signing_key_id(),
        nonce=secrets.token_urlsafe(18),
        label=SIGNATURE_LABEL,
        tag=TAG,
        covered_component_ids=COVERED[:2],
        body=body,
    )
    return message.headers


class Verifier(HTTPMessageVerifier):
    require_created = True

    def __init__(self, key_resolver, window: int):
        super().__init__(signature_algorithm=algorithms.ED25519, key_resolver=key_resolver)
        self.max_clock_skew = datetime.timedelta(seconds=window)


def verify_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    lookup: Callable[[str, str], str | None],
    remember_nonce: bool = True,
) -> Verified:
    """Return who signed the request, or raise BadSignature.

    `url` is this broker's own public URL of the request (its base URL and the path), so a
    request signed for another broker or another path does not verify here.
    """
    wanted = {name: headers[name] for name in ("Signature-Input", "Signature", "Content-Digest") if name in headers}
    if "Signature-Input" not in wanted or "Signature" not in wanted:
        raise BadSignature("The request is not signed.")
    window = settings.RENTAHAL_FEDERATION_SIGNATURE_WINDOW
    verifier = Verifier(LookupKey(lookup), window)
    try:
        [result] = verifier.verify(
            Message(method.upper(), url, wanted),
            max_age=datetime.timedelta(0),
            expect_tag=TAG,
            require_components=COVERED,
            body=body,
        )
    except BadSignature:
        raise
    except (HTTPMessageSignaturesException, ValueError) as exc:
        raise BadSignature(f"The signature does not verify: {exc}") from None
    key_id = str(result.parameters["keyid"])
    nonce = result.nonce
    if not nonce or len(nonce) > 128:
        raise BadSignature("The signature carries no nonce.")
    if remember_nonce and not first_use_of(key_id, nonce, ttl=2 * window + 1):
        raise BadSignature("The nonce was used before: a replayed request.")
    federation_id, _, kid = key_id.partition("#")
    return Verified(federation_id, kid, nonce)


def first_use_of(key_id: str, nonce: str, *, ttl: int) -> bool:
    """Remember the nonce for the window; return False if it was already there (SET NX)."""
    return bool(redis_client().set(f"{NONCE_PREFIX}{key_id}:{nonce}", 1, nx=True, ex=ttl))
