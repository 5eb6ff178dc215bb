"""This broker's identity: its key made and rotated by command, the well-known document that
publishes current and retired keys, and a peer's rotated key verifying until it expires."""
import contextlib
import datetime
import http.server
import os
import stat
import threading

import orjson
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from federation import identity
from federation.models import Peer
from federation.testing import PeerPersona, new_key_b64

WELL_KNOWN = "/.well-known/rentahal/federation"


def test_rotated_key_stays_published_with_its_expiry_beside_the_new_one(db, settings, tmp_path):
    settings.RENTAHAL_FEDERATION_PRIVATE_KEY = ""
    settings.RENTAHAL_FEDERATION_KEY_FILE = str(tmp_path / "federation.pem")
    call_command("federation_keys", "create")
    old = identity.current_public_key()

    call_command("federation_keys", "rotate")

    document = Client().get(WELL_KNOWN).json()
    assert document["federation_id"] == settings.RENTAHAL_FEDERATION_ID
    current, retired = document["keys"]
    assert current["public_key"] == identity.current_public_key() != old
    assert (current["valid_until"], retired["public_key"]) == (None, old)
    assert datetime.datetime.fromisoformat(retired["valid_until"]) > timezone.now() + datetime.timedelta(days=6)
    assert stat.S_IMODE(os.stat(tmp_path / "federation.pem").st_mode) == 0o600


def test_private_key_appears_in_no_table_the_admin_shows(db, settings, tmp_path, admin_client):
    settings.RENTAHAL_FEDERATION_PRIVATE_KEY = ""
    settings.RENTAHAL_FEDERATION_KEY_FILE = str(tmp_path / "federation.pem")
    call_command("federation_keys", "create")
    call_command("federation_keys", "rotate")
    private_pem = (tmp_path / "federation.pem").read_text()
    secret_line = private_pem.splitlines()[1]

    for page in ("/admin/federation/signingkey/", "/admin/federation/peer/", "/admin/federation/invitation/"):
        assert secret_line not in admin_client.get(page).content.decode()


def advertise_signed_with(persona: PeerPersona):
    body = orjson.dumps({"query_types": [], "capacity": 0, "price_per_query": "0", "price_per_second": "0"})
    headers = persona.sign("POST", "http://testserver/api/federation/advertise", body)
    extra = {f"HTTP_{name.upper().replace('-', '_')}": value for name, value in headers.items()}
    return Client().post("/api/federation/advertise", data=body, content_type="application/json", **extra)


def test_a_peers_old_key_verifies_until_its_validity_ends(peer):
    old = PeerPersona(peer.federation_id, peer.private_key)
    rotated = PeerPersona(peer.federation_id, new_key_b64())
    later = (timezone.now() + datetime.timedelta(hours=1)).isoformat()
    Peer.objects.filter(pk=peer.row.pk).update(keys=[rotated.key_entry, {**old.key_entry, "valid_until": later}])

    assert advertise_signed_with(old).status_code == 200
    assert advertise_signed_with(rotated).status_code == 200

    earlier = (timezone.now() - datetime.timedelta(seconds=1)).isoformat()
    Peer.objects.filter(pk=peer.row.pk).update(keys=[rotated.key_entry, {**old.key_entry, "valid_until": earlier}])
    assert advertise_signed_with(old).status_code == 401


def test_openapi_schema_lists_the_federation_endpoints(db):
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    paths = orjson.loads(response.content)["paths"]
    for name in ("join", "advertise", "discover", "route", "status", "settlement"):
        assert f"/api/federation/{name}" in paths


@contextlib.contextmanager
def serving_document(document: dict):
    """Serve a well-known document on a loopback port, as a peer's broker would."""
    body = orjson.dumps(document)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == WELL_KNOWN else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_peer_that_rotated_its_key_is_verified_after_its_keys_are_fetched_again(peer):
    rotated = PeerPersona(peer.federation_id, new_key_b64())
    later = (timezone.now() + datetime.timedelta(days=1)).isoformat()
    keys = [rotated.key_entry, {**peer.key_entry, "valid_until": later}]
    with serving_document({"federation_id": peer.federation_id, "base_url": "", "keys": keys}) as url:
        Peer.objects.filter(pk=peer.row.pk).update(base_url=url)

        response = advertise_signed_with(rotated)

    assert response.status_code == 200
    assert Peer.objects.get(pk=peer.row.pk).keys == keys
