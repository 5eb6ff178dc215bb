"""A query its full realm gave to peer brokers stays with them on every run, and speech,
which no route can carry to a peer, is never given to them."""
import asyncio
import base64
import decimal
import io
import wave

import pytest
from asgiref.sync import sync_to_async
from rq.job import Job

from conftest import WORKER_KINDS
from federation import actions
from realms.reconcile import reconcile_queries
from rentahal.queues import redis_connection

pytestmark = pytest.mark.django_db(transaction=True)


def advertise(peer, *query_types: str) -> None:
    """Have the peer advertise the query types (it listens on a port where nobody answers)."""
    actions.record_advertisement(
        peer.row,
        actions.Advertisement(
            query_types=list(query_types), aliases=[], capacity=4,
            price_per_query=decimal.Decimal("0.01"), price_per_second=decimal.Decimal("0"),
        ),
    )


def fill(realm) -> None:
    realm.queue_limit = 0
    realm.save()


def lose_job(query_id: str) -> None:
    """Drop the query's job from Redis, as a flush or a worker killed mid-pop would."""
    Job.fetch(query_id, connection=redis_connection()).delete()


async def outcome(client) -> dict:
    while True:
        frame = await client.receive(timeout=30)
        if frame["type"] in ("query_result", "error"):
            return frame


async def test_a_query_given_to_peers_stays_with_peers_when_the_reconciler_runs_it_again(
    start_worker, fake_servers, register_worker, default_realms, alice, peer, connect, settings
):
    settings.RENTAHAL_RECONCILE_AFTER = 0
    local = fake_servers()
    await sync_to_async(register_worker)(local, "openai")
    await sync_to_async(advertise)(peer, "chat")
    await sync_to_async(fill)(default_realms["chat"])
    client = await connect(alice.guid)
    await client.send({"type": "submit_query", "query": {"prompt": "for the peers", "query_type": "chat"}})
    accepted = await client.receive()
    await sync_to_async(lose_job)(accepted["query_id"])

    counts = await sync_to_async(reconcile_queries)()
    await asyncio.to_thread(start_worker, *WORKER_KINDS["concurrent"])
    answer = await outcome(client)

    assert (accepted["type"], accepted["total"], counts["requeued"]) == ("queue_update", 1, 1)
    # The only peer does not answer, so the query fails; the local worker, left to the
    # queries waiting in the full realm, is never asked.
    assert (answer["type"], answer["query_id"]) == ("error", accepted["query_id"])
    assert local.stats()["requests"] == {}


def silence() -> str:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(16000)
        audio.writeframes(b"\0\0" * 1600)
    return base64.b64encode(buffer.getvalue()).decode()


async def test_a_full_speech_realm_refuses_even_when_a_peer_advertised_speech(default_realms, alice, peer, connect):
    await sync_to_async(advertise)(peer, "chat", "speech")
    await sync_to_async(fill)(default_realms["speech"])
    client = await connect(alice.guid)

    query = {"prompt": "", "query_type": "speech", "model_type": "speech", "model_name": "", "audio": silence()}
    await client.send({"type": "submit_query", "query": query})
    refused = await client.receive()

    assert (refused["type"], refused["code"]) == ("error", "realm_full")
