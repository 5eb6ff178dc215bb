"""Signed peer requests: a genuine one is served, and every attack is refused with 401 and
leaves nothing written (the advertise endpoint writes the peer's offer and its workers)."""
import datetime

import orjson
import pytest
from django.test import Client

from federation import signing
from federation.models import Peer
from federation.testing import make_peer
from pools.models import Worker

ADVERTISE = "/api/federation/advertise"
URL = "http://testserver" + ADVERTISE
OFFER = {"query_types": ["chat"], "aliases": ["$CHAT"], "capacity": 4, "price_per_query": "0.02", "price_per_second": "0.001"}
BODY = orjson.dumps(OFFER)


def post(headers: dict, body: bytes = BODY, path: str = ADVERTISE, method: str = "post"):
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return getattr(Client(), method)(path, data=body, content_type="application/json", **extra)


def nothing_written(peer_id: str = "peer-b") -> bool:
    peer = Peer.objects.filter(federation_id=peer_id).first()
    return (peer is None or peer.advertised == {}) and not Worker.objects.exists()


def signed_at(persona, seconds_off: float) -> dict:
    moment = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds_off)
    with persona.as_self():
        message = signing.Message("POST", URL, {})
        from http_message_signatures import HTTPMessageSigner, algorithms

        HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=signing.OwnKey()).sign(
            message,
            key_id=signing.identity.signing_key_id(),
            created=moment,
            nonce="n" * 24,
            label=signing.SIGNATURE_LABEL,
            tag=signing.TAG,
            covered_component_ids=signing.COVERED[:2],
            body=BODY,
        )
    return message.headers


def test_genuine_advertisement_is_stored_and_mirrored_as_a_peer_worker(peer):
    response = post(peer.sign("POST", URL, BODY))

    assert response.status_code == 200
    assert Peer.objects.get(federation_id="peer-b").advertised["query_types"] == ["chat"]
    worker = Worker.objects.get()
    assert (worker.name, worker.wire_format, worker.max_concurrency, str(worker.price)) == ("peer:peer-b:chat", "peer", 4, "0.020000")


def attack_unsigned(persona):
    return post({})


def attack_garbage_signature(persona):
    headers = persona.sign("POST", URL, BODY)
    headers["Signature"] = "rentahal=:" + "A" * 86 + "==:"
    return post(headers)


def attack_tampered_body(persona):
    return post(persona.sign("POST", URL, BODY), body=BODY.replace(b'"capacity":4', b'"capacity":9999'))


def attack_tampered_digest_and_body(persona):
    from http_message_signatures.digests import ContentDigest

    tampered = BODY.replace(b'"capacity":4', b'"capacity":9999')
    headers = persona.sign("POST", URL, BODY)
    headers["Content-Digest"] = ContentDigest.create(tampered)
    return post(headers, body=tampered)


def attack_other_path(persona):
    return post(persona.sign("POST", "http://testserver/api/federation/discover", BODY))


def attack_other_method(persona):
    return post(persona.sign("PUT", URL, BODY))


def attack_stale_created(persona):
    return post(signed_at(persona, -301 - 5))


def attack_future_created(persona):
    return post(signed_at(persona, 301 + 5))


def attack_replayed_nonce(persona):
    headers = persona.sign("POST", URL, BODY)
    first = post(headers)
    assert first.status_code == 200
    Peer.objects.filter(federation_id="peer-b").update(advertised={})
    Worker.objects.all().delete()
    return post(headers)


def attack_unknown_key(persona):
    stranger = make_peer("stranger")
    Peer.objects.filter(federation_id="stranger").delete()
    return post(stranger.sign("POST", URL, BODY))


def attack_key_of_another_peer(persona):
    # A key that verifies, but claimed as peer-b's: the keyid names peer-b with another key.
    other = make_peer("peer-c")
    other.federation_id = "peer-b"
    return post(other.sign("POST", URL, BODY))


def attack_suspended_peer(persona):
    Peer.objects.filter(federation_id="peer-b").update(status=Peer.Status.SUSPENDED)
    return post(persona.sign("POST", URL, BODY))


def attack_revoked_peer(persona):
    Peer.objects.filter(federation_id="peer-b").update(status=Peer.Status.REVOKED)
    return post(persona.sign("POST", URL, BODY))


def attack_pending_peer(persona):
    Peer.objects.filter(federation_id="peer-b").update(status=Peer.Status.PENDING)
    return post(persona.sign("POST", URL, BODY))


@pytest.mark.parametrize(
    "attack",
    [
        attack_unsigned, attack_garbage_signature, attack_tampered_body, attack_tampered_digest_and_body,
        attack_other_path, attack_other_method, attack_stale_created, attack_future_created, attack_replayed_nonce,
        attack_unknown_key, attack_key_of_another_peer, attack_suspended_peer, attack_revoked_peer, attack_pending_peer,
    ],
    ids=lambda attack: attack.__name__.removeprefix("attack_"),
)
def test_signature_attack_is_refused_with_401_and_writes_nothing(peer, attack):
    response = attack(peer)

    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] in ("bad_signature", "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Signature")
    assert nothing_written()


def test_route_with_a_changed_method_is_refused_before_anything_runs(peer):
    body = orjson.dumps({"query_id": "q1", "user": "ab", "query_type": "chat", "prompt": "hi", "hops": 1, "via": ["peer-b"]})
    headers = peer.sign("GET", "http://testserver/api/federation/route", body)

    response = post(headers, body=body, path="/api/federation/route")

    assert response.status_code == 401
    assert not peer.row.settlements.exists()
