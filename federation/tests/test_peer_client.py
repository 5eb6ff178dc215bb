"""The client that asks a peer to serve a query, against peers that misbehave over real HTTP:
one answering garbage, one cutting its stream, one hanging. Each call fails clearly as the
peer's fault (so dispatch cools the peer and fails over) and is settled once, as failed."""
import asyncio

import pytest
from aiohttp import web
from asgiref.sync import sync_to_async

from federation.client import PeerClient, pseudonym
from federation.models import SentSettlement
from pools.clients import CallLimits, ModelRequest, ModelServerError
from pools.models import peer_worker_name
from pools.selection import WorkerInfo
from rentahal.http_session import model_session
from rentahal.query_context import QueryContext, serving_query
from rentahal.sharding import shard_for_guid

pytestmark = pytest.mark.django_db(transaction=True)


async def garbage(request):
    return web.Response(text="this is not ndjson\n", content_type="application/x-ndjson")


async def cut_off(request):
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    await response.write(b'{"chunk": "half an ans')
    return response


async def hang(request):
    await asyncio.sleep(30)
    return web.Response(text="{}")


async def over_limit(request):
    return web.json_response({"error": {"code": "peer_over_limit", "message": "slow down"}}, status=429, headers={"Retry-After": "7"})


async def serve_app(handler):
    app = web.Application()
    app.router.add_post("/api/federation/route", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.mark.parametrize(
    "handler, kind, settled",
    [(garbage, "server", "failed"), (cut_off, "server", "failed"), (hang, "timeout", "failed"), (over_limit, "rate_limited", None)],
    ids=["garbage", "cut_off_stream", "hangs", "refuses_over_limit"],
)
async def test_a_misbehaving_peer_fails_the_call_as_its_fault_and_is_settled_once(peer, alice, handler, kind, settled):
    runner, url = await serve_app(handler)
    worker = WorkerInfo(
        id=1, name=peer_worker_name(peer.federation_id, "chat"), query_type="chat", realm="", address=url,
        wire_format="peer", model=peer.federation_id,
    )
    limits = CallLimits(connect_timeout=2, read_timeout=1.5, max_answer_bytes=1024)
    try:
        with serving_query(QueryContext("q-42", alice.guid)), pytest.raises(ModelServerError) as failure:
            async with model_session() as session:
                await PeerClient().call(session, worker, ModelRequest(prompt="hi", query_type="chat"), limits=limits)
    finally:
        await runner.cleanup()

    assert failure.value.kind == kind
    # Recorded beside alice's charges, on her shard.
    home = await sync_to_async(shard_for_guid)(alice.guid)
    rows = await sync_to_async(list)(SentSettlement.objects.using(home).values_list("query_id", "user", "status", "amount"))
    assert rows == ([("q-42", pseudonym(alice.guid, peer.federation_id), settled, 0)] if settled else [])
