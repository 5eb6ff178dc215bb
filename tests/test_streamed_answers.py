"""Streamed answers reach the user as few `query_chunk` frames, in order and with the same
text: the first piece at once, the rest gathered (rentahal.pushes.stream_query_chunks)."""
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import connect as ws_connect

from accounts.models import Query
from conftest import PROJECT_DIR, worker_environment
from pools.testing.fake_answers import answer_text, pieces_of

pytestmark = pytest.mark.django_db(transaction=True)

CONCURRENT = ["--concurrency", "16", "--shutdown-grace", "5"]
STREAMING_FORMATS = ["openai", "ollama"]


def chat(prompt: str) -> dict:
    return {"type": "submit_query", "query": {"prompt": prompt, "query_type": "chat", "model_type": "worker_node", "model_name": ""}}


def chunks_of(frames: list[dict]) -> list[str]:
    return [frame["chunk"] for frame in frames if frame["type"] == "query_chunk"]


def answer(prompt: str, tokens: int) -> list[str]:
    """The pieces the fake server streams for `prompt`."""
    return pieces_of(answer_text(prompt, None), tokens)


@pytest.mark.parametrize("wire_format", STREAMING_FORMATS)
async def test_a_thousand_tiny_pieces_arrive_as_far_fewer_frames_with_the_same_text_in_order(
    wire_format, start_worker, fake_servers, register_worker, alice, connect, monkeypatch
):
    # A thousand pauses of a millisecond take seconds on a busy machine: past the tests' 3 s.
    monkeypatch.setenv("MODEL_READ_TIMEOUT", "60")
    server = fake_servers(tokens=1000, token_delay=0.001)
    await sync_to_async(register_worker)(server, wire_format)
    start_worker(*CONCURRENT)
    client = await connect(alice.guid)

    await client.send(chat("count to a thousand"))
    frames = await client.receive_until("query_result", timeout=60)

    chunks = chunks_of(frames)
    assert "".join(chunks) == "".join(answer("count to a thousand", 1000)) == frames[-1]["result"]
    assert len(chunks) < 250


@pytest.mark.parametrize("wire_format", STREAMING_FORMATS)
async def test_text_read_before_a_pause_in_the_answer_is_pushed_without_waiting_for_the_rest(
    wire_format, start_worker, fake_servers, register_worker, alice, connect
):
    server = fake_servers(tokens=20, pause_after=10, pause_seconds=2.0)
    await sync_to_async(register_worker)(server, wire_format)
    start_worker(*CONCURRENT)
    client = await connect(alice.guid)

    await client.send(chat("pause halfway"))
    frames = await client.receive_until("query_result", timeout=30)

    pieces = answer("pause halfway", 20)
    chunks = chunks_of(frames)
    assert "".join(chunks) == "".join(pieces) == frames[-1]["result"]
    pushed_so_far = ["".join(chunks[:end]) for end in range(1, len(chunks) + 1)]
    assert "".join(pieces[:10]) in pushed_so_far


async def test_the_first_piece_is_pushed_at_once_and_the_rest_when_the_answer_ends_not_after_the_window(
    start_worker, fake_servers, register_worker, alice, connect, monkeypatch
):
    monkeypatch.setenv("CHUNK_PUSH_SECONDS", "120")
    server = fake_servers(tokens=6, pause_after=1, pause_seconds=1.0)
    await sync_to_async(register_worker)(server, "openai")
    start_worker(*CONCURRENT)
    client = await connect(alice.guid)

    await client.send(chat("first at once"))
    frames = await client.receive_until("query_result", timeout=30)

    pieces = answer("first at once", 6)
    assert chunks_of(frames) == [pieces[0], "".join(pieces[1:])]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def daphne_port(transactional_db, default_realms):
    """daphne serving /ws on a free loopback port, so sockets are real TCP with real buffers."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1", "-p", str(port), "rentahal.asgi:application"],
        cwd=PROJECT_DIR, env=worker_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert process.poll() is None and time.monotonic() < deadline, "daphne did not come up"
        time.sleep(0.1)
    yield port
    process.terminate()
    process.wait(timeout=30)


async def open_socket(port: int, guid: str, *, receive_buffer: int | None = None):
    """Open /ws as the user and read its greeting; with `receive_buffer`, a client whose
    kernel buffer is that small and that holds one frame before it stops reading the wire."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    client = await ws_connect(
        f"ws://127.0.0.1:{port}/ws", sock=sock, additional_headers={"Cookie": f"user_guid={guid}"},
        max_queue=1 if receive_buffer is not None else 16, ping_interval=None,
    )
    while orjson.loads(await client.recv())["type"] != "huggingface_update":
        pass
    return client


async def test_a_user_who_stops_reading_does_not_hold_up_another_users_stream(
    daphne_port, start_worker, fake_servers, register_worker, alice, bob
):
    server = fake_servers(token_delay=0.001)
    await sync_to_async(register_worker)(server, "openai")
    start_worker(*CONCURRENT)
    stalled = await open_socket(daphne_port, alice.guid, receive_buffer=4096)
    reader = await open_socket(daphne_port, bob.guid)
    long_prompt = " ".join(["x" * 999] * 30)
    for _ in range(16):
        await stalled.send(orjson.dumps(chat(long_prompt)).decode())

    await reader.send(orjson.dumps(chat("are you there")).decode())
    frames = []
    while not frames or frames[-1]["type"] != "query_result":
        frames.append(orjson.loads(await asyncio.wait_for(reader.recv(), 30)))

    assert "".join(chunks_of(frames)) == frames[-1]["result"] == "".join(answer("are you there", 0))
    stalled_done = Query.objects.filter(user_id=alice.guid, status=Query.Status.DONE)
    deadline = time.monotonic() + 60
    while await sync_to_async(stalled_done.count)() < 16:
        assert time.monotonic() < deadline, "the stalled user's queries were not all answered"
        await asyncio.sleep(0.2)
    await reader.close()
    stalled.transport.abort()
