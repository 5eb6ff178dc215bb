"""Federation between live brokers, each with its own database, Redis db and port: joining,
approval, gossip, queries served by peers (frames, charges, settlement), pool aliases
spanning a peer, loop prevention, failover from a peer that dies, and per-peer limits."""
import asyncio
import decimal

import orjson
import pytest
import websockets
from django.core.management import call_command
from django.test import Client, override_settings

from accounts.models import Charge, Query
from federation import actions
from federation.discovery import run_discovery
from federation.models import Invitation, Peer, SentSettlement, Settlement
from pools import actions as pool_actions
from pools.models import Worker
from rentahal.sharding import shard_aliases, shard_for_guid

pytestmark = pytest.mark.django_db(transaction=True)


def invite(broker) -> str:
    """Return a fresh invitation token of `broker` (a: in this process; b, c: its command)."""
    if broker.letter == "a":
        return actions.create_invitation(note="test", acting_user=None)[1]
    output = broker.manage("federation_invite").stdout
    return next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("token: "))


def join(joiner, inviter, token: str | None = None) -> str:
    """Run `federation_join` on `joiner` and return what it printed."""
    token = invite(inviter) if token is None else token
    if joiner.letter == "a":
        from io import StringIO

        out = StringIO()
        with override_settings(RENTAHAL_FEDERATION_BASE_URL=joiner.url):
            call_command("federation_join", inviter.url, token, stdout=out)
        return out.getvalue()
    result = joiner.manage("federation_join", inviter.url, token, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def peer_row(broker, federation_id: str) -> dict | None:
    """Return a broker's row of a peer as a dict (a: ORM; b, c: SQL)."""
    if broker.letter == "a":
        row = Peer.objects.filter(federation_id=federation_id).values("status", "introduced_by", "advertised", "received", "sent").first()
        return row
    rows = broker.sql(
        "SELECT status, introduced_by, advertised, received, sent FROM federation_peer WHERE federation_id = %s", (federation_id,)
    )
    return dict(zip(["status", "introduced_by", "advertised", "received", "sent"], rows[0])) if rows else None


def served_rows(broker) -> list[dict]:
    rows = broker.sql(
        "SELECT p.federation_id, s.query_id, s.user, s.query_type, s.service_seconds, s.amount, s.status "
        "FROM federation_settlement s JOIN federation_peer p ON p.id = s.peer_id WHERE s.direction = 'served' ORDER BY s.id"
    )
    return [dict(zip(["peer", "query_id", "user", "query_type", "service_seconds", "amount", "status"], row)) for row in rows]


async def ask(broker, prompt: str, timeout: float = 60, on_frame=None) -> list[dict]:
    """Submit a chat query on the broker's /ws as a new user; return its frames up to the
    result or error. `on_frame` sees each of those frames the moment it arrives."""
    frames = []
    async with websockets.connect(f"ws://127.0.0.1:{broker.port}/ws") as ws:
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
            if frame["type"] == "user_info":
                frames.append(frame)
            if frame["type"] == "huggingface_update":
                break
        query = {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": ""}
        await ws.send(orjson.dumps({"type": "submit_query", "query": query}).decode())
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
            if frame["type"] in ("queue_update", "query_chunk", "query_result", "error"):
                frames.append(frame)
                if on_frame is not None:
                    on_frame(frame)
            if frame["type"] in ("query_result", "error"):
                return frames


def test_invited_broker_joins_and_both_sides_list_each_other_active(brokers):
    a, b = brokers("a"), brokers("b")
    token = invite(a)

    printed = join(b, a, token)

    assert f"joined {a.federation_id}" in printed and "active" in printed
    assert peer_row(a, b.federation_id)["status"] == "active"
    assert peer_row(b, a.federation_id)["status"] == "active"
    assert Invitation.objects.get().used_by.federation_id == b.federation_id
    # Single use: a second broker presenting the same token waits for approval instead.
    c = brokers("c")
    assert "pending" in join(c, a, token)
    assert peer_row(a, c.federation_id)["status"] == "pending"


def test_join_without_invitation_waits_until_an_operator_approves_it_in_the_admin(brokers, admin_client):
    a, c = brokers("a"), brokers("c")

    assert "pending until its operator approves" in join(c, a, token="")
    assert peer_row(a, c.federation_id)["status"] == "pending"
    assert peer_row(c, a.federation_id)["status"] == "pending"

    pending = Peer.objects.get(federation_id=c.federation_id)
    with override_settings(RENTAHAL_FEDERATION_BASE_URL=a.url):
        response = admin_client.post("/admin/federation/peer/", {"action": "approve", "_selected_action": [pending.pk]})

    assert response.status_code == 302
    assert peer_row(a, c.federation_id)["status"] == "active"
    # Our first signed advertisement told c it was approved.
    assert peer_row(c, a.federation_id)["status"] == "active"


def test_peers_learned_by_gossip_are_added_pending_with_their_introducer(brokers):
    a, b, c = brokers("a"), brokers("b"), brokers("c")
    join(b, a)
    join(c, b)

    with override_settings(RENTAHAL_FEDERATION_BASE_URL=a.url):
        outcomes = run_discovery()

    learned = peer_row(a, c.federation_id)
    assert (learned["status"], learned["introduced_by"]) == ("pending", b.federation_id)
    assert f"introduced {c.federation_id}" in outcomes[b.federation_id]
    assert not Worker.objects.filter(model=c.federation_id).exists()


def test_chat_query_without_a_local_chat_worker_is_served_by_a_peer_and_settled_on_both_sides(brokers, fake_server):
    a, b = brokers("a"), brokers("b", workers=[("b-chat", fake_server)])
    join(b, a)

    frames = asyncio.run(ask(a, "What is the capital of France?"))

    guid = frames[0]["data"]["guid"]
    result = frames[-1]
    assert [frame["type"] for frame in frames[1:2]] == ["queue_update"]
    assert result["type"] == "query_result", result
    assert (result["result"], result["broker"], result["worker"]) == (
        "echo: What is the capital of France?", b.federation_id, f"peer:{b.federation_id}:chat"
    )
    assert "".join(frame["chunk"] for frame in frames if frame["type"] == "query_chunk") == result["result"]
    # The user is charged by their own broker, as for a local answer.
    query = Query.objects.get(pk=result["query_id"])
    [charge] = query.charges.all()
    assert float(charge.amount) == pytest.approx(result["cost"]) and charge.amount > 0
    # The serving broker recorded it against a's account, under a pseudonym.
    [served] = served_rows(b)
    assert (served["peer"], served["query_id"], served["status"]) == (a.federation_id, result["query_id"], "done")
    assert guid not in served["user"] and served["user"] != guid.replace("-", "")
    # Our record of it lives on the user's shard, beside their charge.
    [sent] = SentSettlement.objects.using(query._state.db).all()
    assert query._state.db == shard_for_guid(guid) and SentSettlement.objects.count() == 1
    assert (sent.query_id, sent.user, sent.amount) == (served["query_id"], served["user"], served["amount"])
    assert served["amount"] > decimal.Decimal(0)
    # Both sides agree when reconciled over a signed call.
    with override_settings(RENTAHAL_FEDERATION_BASE_URL=a.url):
        from io import StringIO

        out = StringIO()
        call_command("federation_reconcile", b.federation_id, stdout=out)
    assert "agrees" in out.getvalue()
    assert "sent: 1 queries (1 done)" in b.manage("federation_settlement", a.federation_id).stdout.replace(
        "served: 1 queries (1 done)", "sent: 1 queries (1 done)"
    )


def test_a_peers_answer_reaches_the_user_chunk_by_chunk_while_the_peer_still_writes_it(brokers, fake_servers):
    # b's model writes one piece, then pauses before the rest: the user must read that piece meanwhile.
    slow = fake_servers(tokens=3, pause_after=1, pause_seconds=8.0)
    a, b = brokers("a"), brokers("b", workers=[("b-chat", slow)])
    join(b, a)
    writing_at_first_chunk = []

    def watch(frame: dict) -> None:
        if frame["type"] == "query_chunk" and not writing_at_first_chunk:
            writing_at_first_chunk.append(slow.stats()["in_flight"])

    frames = asyncio.run(ask(a, "stream to me", on_frame=watch))

    assert frames[-1]["type"] == "query_result", frames[-1]
    assert writing_at_first_chunk == [1]
    assert "".join(frame["chunk"] for frame in frames if frame["type"] == "query_chunk") == frames[-1]["result"]


def test_a_query_its_full_realm_would_refuse_is_served_by_a_peer_leaving_local_workers_to_the_queue(
    brokers, fake_servers, register_worker, default_realms
):
    a, b = brokers("a"), brokers("b", workers=[("b-chat", fake_servers())])
    join(b, a)
    local = fake_servers()
    register_worker(local, name="a-chat")
    chat = default_realms["chat"]
    chat.queue_limit = 0
    chat.save()

    frames = asyncio.run(ask(a, "is there room?"))

    update, result = frames[1], frames[-1]
    assert (update["type"], update["realm"], update["depth"], update["total"]) == ("queue_update", "$CHAT", 1, 1)
    assert result["type"] == "query_result", result
    assert (result["broker"], result["result"]) == (b.federation_id, "echo: is there room?")
    assert local.stats()["requests"] == {}
    [served] = served_rows(b)
    assert (served["query_id"], served["status"]) == (result["query_id"], "done")


def test_pool_alias_spans_a_local_worker_and_a_peer(brokers, fake_servers, register_worker):
    a, b = brokers("a"), brokers("b", workers=[("b-chat", fake_servers())])
    join(b, a)
    register_worker(fake_servers(), name="a-chat")
    pool_actions.create_pool(
        "$CHAT", query_type="chat", realm="$CHAT", strategy="round_robin",
        members=["a-chat", f"peer:{b.federation_id}:chat"], acting_user=None,
    )

    answers = [asyncio.run(ask(a, f"question {number}"))[-1] for number in range(2)]

    assert [answer["type"] for answer in answers] == ["query_result", "query_result"]
    assert sorted(answer["broker"] for answer in answers) == sorted([a.federation_id, b.federation_id])


def test_a_query_never_loops_between_three_brokers(brokers, fake_servers):
    failing = fake_servers(failure_rate=1.0)
    a = brokers("a", max_hops=2)
    b = brokers("b", max_hops=2, workers=[("b-chat", failing)])
    c = brokers("c", max_hops=2, workers=[("c-chat", failing)])
    join(b, a)
    join(c, a)
    join(c, b)

    frames = asyncio.run(ask(a, "round and round"))

    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "query_failed"
    assert not Settlement.objects.filter(direction="served").exists()
    served = served_rows(b) + served_rows(c)
    # Each of b and c took the query at most from each other broker once, and none of them
    # sent it back to a broker it came through.
    assert 1 <= len(served) <= 4
    assert all(row["status"] == "failed" and row["amount"] == 0 for row in served)
    assert not Query.objects.get(pk=frames[-1]["query_id"]).charges.exists()


def test_of_two_peers_at_one_price_the_slow_one_loses_to_the_fast_one_once_both_were_measured(brokers, fake_servers):
    a = brokers("a")
    b = brokers("b", workers=[("b-chat", fake_servers(delay=2.0))])
    c = brokers("c", workers=[("c-chat", fake_servers())])
    join(b, a)
    join(c, a)

    # A peer not measured yet is tried first, so the first two queries measure both.
    brokers_asked = [asyncio.run(ask(a, f"question {number}"))[-1]["broker"] for number in range(4)]

    assert sorted(brokers_asked[:2]) == sorted([b.federation_id, c.federation_id])
    assert brokers_asked[2:] == [c.federation_id, c.federation_id]


def test_a_peer_that_dies_before_its_first_chunk_fails_over_to_another(brokers, fake_servers):
    slow = fake_servers(delay=8.0)
    a = brokers("a")
    b = brokers("b", workers=[("b-chat", slow)])
    c = brokers("c", workers=[("c-chat", fake_servers())])
    c.env["FEDERATION_PRICE_PER_QUERY"] = "0.5"
    join(b, a)
    join(c, a)
    # c advertised before its price went up; advertise again so a prefers the cheaper b.
    c.stop()
    c.start()
    assert c.manage("federation_discover").returncode == 0

    async def scenario():
        asking = asyncio.ensure_future(ask(a, "are you there?"))
        for _ in range(600):
            if slow.stats()["in_flight"]:
                break
            await asyncio.sleep(0.05)
        b.kill()
        return await asking

    frames = asyncio.run(scenario())

    assert frames[-1]["type"] == "query_result", frames[-1]
    assert (frames[-1]["broker"], frames[-1]["result"]) == (c.federation_id, "echo: are you there?")
    outcomes = {row.peer: row.status for alias in shard_aliases() for row in SentSettlement.objects.using(alias)}
    assert outcomes == {b.federation_id: "failed", c.federation_id: "done"}
