"""The one frame limit (MAX_FRAME_BYTES) through the server a newcomer runs: daphne, started by
`manage.py run_broker`, takes frames above its own 1 MiB default, so the consumer is what
refuses a frame over the limit, with an `error` frame on a socket that stays open."""
import base64

import orjson
import pytest
import websockets
from asgiref.sync import sync_to_async

from accounts.models import Query
from tests.test_live_broker import read_until, start_broker

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024


@pytest.fixture
def broker_port(transactional_db, default_realms):
    process, port = start_broker("--no-local-model")
    yield port
    process.terminate()
    process.wait(timeout=30)


async def greeted_socket(port: int):
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=30)
    await read_until(ws, "huggingface_update")
    return ws


async def test_full_size_vision_chunk_over_one_mib_is_accepted(broker_port):
    full_chunk = base64.b64encode(b"\xff" * MIB).decode()
    frame = orjson.dumps({"type": "vision_chunk", "image_id": "big", "chunk_id": 0, "total_chunks": 2, "chunk_data": full_chunk,
                          "prompt": "what is this", "query_type": "vision"})
    assert MIB < len(frame) < 1.5 * MIB

    async with await greeted_socket(broker_port) as ws:
        await ws.send(frame.decode())

        assert await read_until(ws, "vision_chunk_received") == {"type": "vision_chunk_received", "message": "Chunk 1/2 received"}


async def test_frame_of_one_and_a_half_mib_reaches_the_consumer(broker_port):
    frame = orjson.dumps({"type": "pong", "padding": "x" * (3 * MIB // 2)}).decode()

    async with await greeted_socket(broker_port) as ws:
        await ws.send(frame)
        await ws.send('{"type": "get_previous_queries"}')

        assert (await read_until(ws, "previous_queries"))["data"] == []


async def test_frame_over_the_limit_gets_an_error_and_the_socket_stays_open(broker_port):
    prompt = "x" * (2 * MIB + 1024)
    frame = orjson.dumps({"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat"}}).decode()

    async with await greeted_socket(broker_port) as ws:
        await ws.send(frame)
        error = await read_until(ws, "error")
        await ws.send('{"type": "get_previous_queries"}')
        answered = await read_until(ws, "previous_queries")

    assert error["code"] == "frame_too_large"
    assert f"over the {2 * MIB}-byte limit" in error["message"]
    assert answered["data"] == []
    assert await sync_to_async(Query.objects.count)() == 0
