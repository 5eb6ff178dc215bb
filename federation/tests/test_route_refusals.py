"""Bad input at the federation endpoints: each refused clearly, with its code, before any
work is done and with nothing recorded or charged."""
import orjson
import pytest
from django.test import Client

from federation import limits
from federation.models import Peer, Settlement

ROUTE = "/api/federation/route"
JOIN = "/api/federation/join"


def route_body(**changes) -> bytes:
    body = {"query_id": "q-1", "user": "ab12", "query_type": "chat", "prompt": "hi", "hops": 1, "via": ["peer-b"]}
    return orjson.dumps({**body, **changes})


def send(persona, body: bytes, path: str = ROUTE, headers: dict | None = None, address: str = "127.0.0.1"):
    headers = headers or persona.sign("POST", "http://testserver" + path, body)
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return Client(REMOTE_ADDR=address).post(path, data=body, content_type="application/json", **extra)


@pytest.mark.parametrize(
    "body, code",
    [
        (route_body(query_type="telepathy"), "invalid"),
        (route_body(hops=2), "hop_limit"),
        (route_body(via=["test-3-a", "peer-b"]), "loop_detected"),
        (route_body(via=["someone-else"]), "loop_detected"),
        (route_body(user="Not A Pseudonym"), "invalid"),
        (b'{"query_id": "q-1", "prompt": ', "malformed"),
    ],
    ids=["unknown_query_type", "hop_count_over_the_limit", "path_through_us", "path_not_ending_at_the_sender", "guid_like_user", "malformed_json"],
)
def test_bad_route_is_refused_with_its_code_and_nothing_recorded(peer, settings, body, code):
    settings.RENTAHAL_FEDERATION_ID = "test-3-a"

    response = send(peer, body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert not Settlement.objects.exists()


def test_replayed_route_is_refused_with_401(peer):
    body = route_body(hops=5)
    headers = peer.sign("POST", "http://testserver" + ROUTE, body)
    assert send(peer, body, headers=headers).status_code == 400

    replay = send(peer, body, headers=headers)

    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "bad_signature"


@pytest.mark.parametrize(
    "limit, take",
    [
        ({"queries_per_minute": 1}, lambda peer: (limits.acquire(peer), limits.release(peer))),
        ({"max_in_flight": 1}, lambda peer: limits.acquire(peer)),
        ({"spend_limit": 1}, lambda peer: limits.add_spend(peer, peer.spend_limit)),
    ],
    ids=["rate", "in_flight", "spend"],
)
def test_peer_over_a_limit_gets_429_with_retry_after_before_any_work(peer, default_realms, limit, take):
    Peer.objects.filter(pk=peer.row.pk).update(**limit)
    row = Peer.objects.get(pk=peer.row.pk)
    take(row)

    response = send(peer, route_body())

    assert response.status_code == 429
    assert response.json()["error"]["code"] == "peer_over_limit"
    assert 1 <= int(response["Retry-After"]) <= 86400
    assert not Settlement.objects.exists()


@pytest.mark.parametrize(
    "base_url",
    ["http://169.254.169.254", "http://metadata.google.internal", "http://10.0.0.5:8000", "http://[fe80::1]:8000", "ftp://127.0.0.1"],
)
def test_join_from_a_refused_address_is_refused_and_nothing_stored(peer, base_url):
    Peer.objects.all().delete()
    persona_id = peer.federation_id
    body = orjson.dumps({"federation_id": persona_id, "base_url": base_url, "keys": [peer.key_entry], "token": ""})

    response = send(peer, body, path=JOIN)

    assert response.status_code == 400
    assert response.json()["error"]["code"] in ("forbidden_address", "invalid")
    assert not Peer.objects.exists()


def test_join_signed_with_a_key_other_than_the_one_it_sends_is_refused(peer):
    from federation.testing import make_peer

    other = make_peer("peer-c")
    Peer.objects.all().delete()
    body = orjson.dumps({"federation_id": "peer-b", "base_url": "http://127.0.0.1:9", "keys": [other.key_entry], "token": ""})

    response = send(peer, body, path=JOIN)

    assert response.status_code == 401
    assert not Peer.objects.exists()


def test_route_over_its_byte_limit_is_refused_with_413_and_nothing_recorded(peer, settings):
    settings.RENTAHAL_FEDERATION_MAX_ROUTE_BYTES = 4096
    body = route_body(prompt="x" * 4096)

    response = send(peer, body)

    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "route_too_large",
        "message": "The route body is over the 4096-byte limit (FEDERATION_MAX_ROUTE_BYTES).",
    }
    assert not Settlement.objects.exists()


def test_join_over_djangos_body_limit_is_refused_with_413_in_the_error_shape(peer, settings):
    body = orjson.dumps({"federation_id": "peer-b", "base_url": "http://127.0.0.1:9", "keys": [peer.key_entry],
                         "token": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE})

    response = send(peer, body, path=JOIN)

    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "body_too_large",
        "message": f"The body is over the {settings.DATA_UPLOAD_MAX_MEMORY_SIZE}-byte limit.",
    }


def test_route_with_an_image_beyond_djangos_form_limit_is_read_under_its_own(peer, settings):
    settings.RENTAHAL_FEDERATION_ID = "test-3-a"
    image = "A" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    assert len(image) < settings.RENTAHAL_FEDERATION_MAX_ROUTE_BYTES

    # Refused only for what it says: its hop count.
    response = send(peer, route_body(query_type="vision", image=image, hops=2))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "hop_limit"


def test_joins_from_one_address_over_the_hourly_limit_get_429_with_retry_after(peer, settings):
    settings.RENTAHAL_FEDERATION_JOINS_PER_HOUR = 2
    Peer.objects.all().delete()
    body = orjson.dumps({"federation_id": "peer-b", "base_url": "http://127.0.0.1:9", "keys": [peer.key_entry], "token": ""})

    answers = [send(peer, body, path=JOIN, address="192.0.2.7").status_code for _ in range(2)]
    refused = send(peer, body, path=JOIN, address="192.0.2.7")
    elsewhere = send(peer, body, path=JOIN, address="192.0.2.8")

    # The first two are answered for what they say: a pending join, then "already known".
    assert answers == [202, 409]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_joins"
    assert 3500 <= int(refused["Retry-After"]) <= 3600
    assert elsewhere.status_code == 409
