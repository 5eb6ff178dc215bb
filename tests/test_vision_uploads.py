"""Images uploaded in `vision_chunk` frames: a set of chunks must agree with itself, an image
has a size cap, and a user's unfinished uploads are bounded in number and expire, so
neither Postgres rows nor Redis grow with what a client sends. Each refusal is an `error`
frame, the socket stays usable and no query is written."""
import asyncio
import base64

import pytest
from asgiref.sync import sync_to_async

from accounts.models import Query

pytestmark = pytest.mark.django_db(transaction=True)


def chunk(chunk_id, total, data="QUFB", image_id="img-1", **fields) -> dict:
    return {"type": "vision_chunk", "chunk_id": chunk_id, "total_chunks": total, "chunk_data": data, "image_id": image_id,
            "prompt": "what is this", "query_type": "vision", "model_type": "worker_node", "model_name": "", **fields}


async def assert_still_usable(client) -> None:
    await client.send({"type": "get_previous_queries"})
    assert (await client.receive())["type"] == "previous_queries"


async def assert_nothing_written() -> None:
    assert await sync_to_async(Query.objects.count)() == 0


async def send_accepted(client, frame: dict) -> None:
    await client.send(frame)
    assert (await client.receive())["type"] == "vision_chunk_received"


async def upload_keys(redis_client) -> list[bytes]:
    return await sync_to_async(redis_client.keys)("rentahal:vision:*")


@pytest.mark.parametrize(
    ("accepted", "refused", "message"),
    [
        ([chunk(0, 3)], chunk(1, 2), "total_chunks 2 does not match the upload's 3"),
        ([chunk(1, 3), chunk(2, 3)], chunk(1, 2), "total_chunks 2 does not match the upload's 3"),
        ([chunk(0, 2, "QUFB")], chunk(0, 2, "QkJC"), "chunk 0 was already sent with different data"),
    ],
    ids=["total changes", "total shrinks to leave a gap", "duplicate with different data"],
)
async def test_inconsistent_chunk_is_refused_and_its_upload_dropped(accepted, refused, message, alice, default_realms, connect, clean_redis):
    client = await connect(alice.guid)
    for frame in accepted:
        await send_accepted(client, frame)

    await client.send(refused)
    error = await client.receive()

    assert (error["type"], error["code"]) == ("error", "inconsistent_chunks")
    assert message in error["message"]
    await assert_still_usable(client)
    await assert_nothing_written()
    assert await upload_keys(clean_redis) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"chunk_id": 2, "total_chunks": 2}, "chunk_id must be below total_chunks"),
        ({"chunk_id": -1}, "chunk_id must be below total_chunks"),
        ({"total_chunks": 65}, "which is 1 to 64"),
        ({"chunk_id": "0"}, "chunk_id and total_chunks must be whole numbers"),
        ({"chunk_id": True}, "chunk_id and total_chunks must be whole numbers"),
        ({"chunk_data": 7}, "chunk_data must be a base64 string"),
        ({"image_id": ""}, "image_id must be 1 to 64 characters"),
    ],
)
async def test_malformed_chunk_is_refused(fields, message, alice, default_realms, connect):
    client = await connect(alice.guid)

    await client.send({**chunk(0, 2), **fields})
    error = await client.receive()

    assert (error["type"], error["code"]) == ("error", "bad_chunk")
    assert message in error["message"]
    await assert_still_usable(client)


async def test_identical_resend_of_a_chunk_counts_once(alice, default_realms, connect):
    client = await connect(alice.guid)
    await send_accepted(client, chunk(0, 3))

    await client.send(chunk(0, 3))

    assert await client.receive() == {"type": "vision_chunk_received", "message": "Chunk 1/3 received"}


async def test_nul_in_the_prompt_of_a_chunked_upload_is_refused(alice, default_realms, connect, clean_redis):
    client = await connect(alice.guid)

    await client.send(chunk(0, 1, prompt="what\x00is this"))
    frames = await client.receive_until("error")

    assert (frames[-1]["code"], frames[-1]["message"]) == ("bad_field", "Field 'prompt' must not contain NUL characters.")
    await assert_still_usable(client)
    await assert_nothing_written()


async def test_chunked_image_over_the_size_cap_is_refused_and_dropped(alice, default_realms, connect, clean_redis, settings):
    settings.RENTAHAL_MAX_IMAGE_BYTES = 3000
    client = await connect(alice.guid)
    piece = base64.b64encode(b"x" * 1500).decode()
    await send_accepted(client, chunk(0, 3, piece))
    await send_accepted(client, chunk(1, 3, piece))

    await client.send(chunk(2, 3, piece))
    error = await client.receive()

    assert (error["type"], error["code"]) == ("error", "image_too_large")
    assert "the limit is 3000 bytes" in error["message"]
    await assert_still_usable(client)
    await assert_nothing_written()
    assert await upload_keys(clean_redis) == []


async def test_image_over_the_size_cap_in_one_frame_is_refused(alice, default_realms, connect, settings):
    settings.RENTAHAL_MAX_IMAGE_BYTES = 3000
    client = await connect(alice.guid)
    image = base64.b64encode(b"x" * 3001).decode()

    await client.send({"type": "submit_query", "query": {"prompt": "what is this", "query_type": "vision", "image": image}})
    error = await client.receive()

    assert error == {"type": "error", "code": "image_too_large", "message": "The image is 3001 bytes; the limit is 3000 bytes."}
    await assert_still_usable(client)
    await assert_nothing_written()


async def test_a_user_may_keep_only_so_many_unfinished_uploads(alice, bob, default_realms, connect, settings):
    settings.RENTAHAL_MAX_UPLOADS_PER_USER = 2
    client = await connect(alice.guid)
    await send_accepted(client, chunk(0, 3, image_id="first"))
    await send_accepted(client, chunk(0, 3, image_id="second"))

    await client.send(chunk(0, 3, image_id="third"))
    error = await client.receive()

    assert (error["type"], error["code"]) == ("error", "too_many_uploads")
    assert "2 unfinished image uploads" in error["message"]
    await assert_still_usable(client)
    await send_accepted(client, chunk(1, 3, image_id="second"))
    other = await connect(bob.guid)
    await send_accepted(other, chunk(0, 3, image_id="third"))


async def test_finishing_an_upload_frees_its_slot_and_its_redis_keys(alice, default_realms, connect, clean_redis, settings):
    settings.RENTAHAL_MAX_UPLOADS_PER_USER = 1
    client = await connect(alice.guid)
    await send_accepted(client, chunk(0, 2, image_id="first"))

    await client.send(chunk(1, 2, image_id="first"))
    assert (await client.receive())["type"] == "vision_upload_complete"
    await client.receive_until("queue_update")

    assert await upload_keys(clean_redis) == []
    await send_accepted(client, chunk(0, 2, image_id="second"))


async def test_abandoned_upload_expires_and_frees_its_slot(alice, default_realms, connect, clean_redis, settings):
    settings.RENTAHAL_MAX_UPLOADS_PER_USER = 1
    settings.RENTAHAL_UPLOAD_TTL_SECONDS = 1
    client = await connect(alice.guid)
    await send_accepted(client, chunk(0, 2, image_id="abandoned"))
    assert all(0 < clean_redis.ttl(key) <= 1 for key in await upload_keys(clean_redis))

    for _ in range(50):
        if not await upload_keys(clean_redis):
            break
        await asyncio.sleep(0.1)

    assert await upload_keys(clean_redis) == []
    await send_accepted(client, chunk(0, 2, image_id="next"))
