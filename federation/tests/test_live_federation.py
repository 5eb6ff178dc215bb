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
from federation.models import Invitation, Peer, Settlement
from pools import actions as pool_actions
from pools.models import Worker

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


async def ask(broker, prompt: str, timeout: float = 60) -> list[dict]:
    """Submit a chat query on the broker's /ws as a new user; return its frames up to the result or error."""
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
