"""Settlement commands: both sides' totals with a peer, and reconciliation against the peer's
own rows listing every query the two sides recorded differently."""
import contextlib
import decimal
import http.server
import threading
from io import StringIO

import orjson
import pytest
from django.core.management import CommandError, call_command

from federation import actions
from federation.models import Peer, SentSettlement, Settlement
from rentahal.sharding import shard_aliases, shard_for_guid
from tests.shard_helpers import guid_with_prefix


def settle(peer_row, direction, query_id, seconds, status="done", user_guid=None):
    return actions.record_settlement(
        peer_row, direction=direction, query_id=query_id, user="ab", query_type="chat", service_seconds=seconds,
        price_per_query=decimal.Decimal("0.01"), price_per_second=decimal.Decimal("0.001"), status=status,
        user_guid=user_guid or guid_with_prefix("00"),
    )


def shards_holding(query_id: str) -> list[str]:
    return [alias for alias in shard_aliases() if SentSettlement.objects.using(alias).filter(query_id=query_id).exists()]


@contextlib.contextmanager
def peer_reporting(rows: list[dict], asked: list[str]):
    """A peer's settlement endpoint on a loopback port, answering `rows` and noting the paths asked."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(orjson.dumps({"federation_id": "peer-b", "rows": rows}))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_settlement_prints_both_directions_totals(peer):
    # Two users on two shards: the totals gather every shard.
    settle(peer.row, Settlement.Direction.SENT, "q1", 2.0, user_guid=guid_with_prefix("00"))
    settle(peer.row, Settlement.Direction.SENT, "q2", 0.0, status="failed", user_guid=guid_with_prefix("01"))
    assert shards_holding("q1") != shards_holding("q2")
    settle(peer.row, Settlement.Direction.SERVED, "q3", 1.0)
    out = StringIO()

    call_command("federation_settlement", "peer-b", stdout=out)

    assert out.getvalue().splitlines() == [
        "sent: 2 queries (1 done) we asked peer-b, 2.000 s, amount 0.012000",
        "served: 1 queries (1 done) peer-b asked us, 1.000 s, amount 0.011000",
    ]


def test_reconciliation_lists_every_mismatch_with_the_peers_own_rows(peer):
    settle(peer.row, Settlement.Direction.SENT, "agreed", 2.0)
    settle(peer.row, Settlement.Direction.SENT, "other-amount", 2.0)
    settle(peer.row, Settlement.Direction.SENT, "only-here", 1.0)
    theirs = [
        {"direction": "served", "query_id": "agreed", "status": "done", "service_seconds": 2.0, "amount": "0.012000"},
        {"direction": "served", "query_id": "other-amount", "status": "done", "service_seconds": 2.0, "amount": "0.500000"},
        {"direction": "sent", "query_id": "only-there", "status": "done", "service_seconds": 1.0, "amount": "0.011000"},
    ]
    asked: list[str] = []
    out = StringIO()
    with peer_reporting(theirs, asked) as url:
        Peer.objects.filter(pk=peer.row.pk).update(base_url=url)
        with pytest.raises(CommandError, match="3 mismatch"):
            call_command("federation_reconcile", "peer-b", "--since", "2020-01-01T00:00:00+00:00", stdout=out)

    assert out.getvalue().splitlines() == [
        "other-amount: amount: ours 0.012000, theirs 0.500000",
        "only-here: sent only here: ours done, theirs -",
        "only-there: served only at peer-b: ours -, theirs done",
    ]
    assert asked == ["/api/federation/settlement?since=2020-01-01T00%3A00%3A00%2B00%3A00"]


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_sent_row_lives_on_its_users_shard_and_moves_with_them(peer):
    guid = guid_with_prefix("00")
    settle(peer.row, Settlement.Direction.SENT, "q1", 2.0, user_guid=guid)
    settle(peer.row, Settlement.Direction.SERVED, "q2", 1.0)
    home = shard_for_guid(guid)
    assert shards_holding("q1") == [home]
    assert not Settlement.objects.filter(direction=Settlement.Direction.SENT).exists()
    assert Settlement.objects.get(query_id="q2").peer == peer.row
    elsewhere = next(alias for alias in shard_aliases() if alias != home)

    call_command("move_shard_prefix", "00", elsewhere, stdout=StringIO())

    assert shards_holding("q1") == [elsewhere]
    out = StringIO()
    call_command("federation_settlement", "peer-b", stdout=out)
    assert out.getvalue().splitlines()[0] == "sent: 1 queries (1 done) we asked peer-b, 2.000 s, amount 0.012000"
