"""Reassembly of images sent in `vision_chunk` frames (docs/protocol.md §1).

Chunks wait in Redis, not in the consumer, so a reconnecting tab can finish an upload and
an abandoned one expires on its own.
"""
import asyncio
import dataclasses
import weakref

import redis.asyncio as aioredis
from django.conf import settings

from rentahal.errors import BrokerError

CHUNK_TTL_SECONDS = 600
MAX_CHUNK_CHARS = 1024 * 1024 * 4 // 3 + 4  # base64 of a 1 MiB slice
MAX_CHUNKS = 64

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]" = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class ChunkProgress:
    received: int
    total: int
    image: str | None = None
    query: dict | None = None


def redis_client() -> aioredis.Redis:
    loop = asyncio.get_running_loop()
    if loop not in _clients:
        _clients[loop] = aioredis.from_url(settings.REDIS_URL)
    return _clients[loop]


def read_chunk_frame(content: dict) -> tuple[int, int, str, str]:
    try:
        chunk_id = int(content["chunk_id"])
        total = int(content["total_chunks"])
        image_id = str(content["image_id"])
        data = content["chunk_data"]
    except (KeyError, TypeError, ValueError):
        raise BrokerError("A vision_chunk needs chunk_id, total_chunks, chunk_data and image_id.", code="bad_chunk") from None
    if not isinstance(data, str) or len(data) > MAX_CHUNK_CHARS:
        raise BrokerError("chunk_data must be a base64 string of at most 1 MiB.", code="bad_chunk")
    if not 1 <= total <= MAX_CHUNKS or not 0 <= chunk_id < total:
        raise BrokerError(f"chunk_id must be below total_chunks, which is 1 to {MAX_CHUNKS}.", code="bad_chunk")
    if not 1 <= len(image_id) <= 64:
        raise BrokerError("image_id must be 1 to 64 characters.", code="bad_chunk")
    return chunk_id, total, image_id, data


async def store_vision_chunk(guid: str, content: dict) -> ChunkProgress:
    """Keep one chunk; when the last arrives, return the whole image and the query fields."""
    chunk_id, total, image_id, data = read_chunk_frame(content)
    key = f"rentahal:vision:{guid}:{image_id}"
    client = redis_client()
    async with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, str(chunk_id), data)
        pipe.hlen(key)
        pipe.expire(key, CHUNK_TTL_SECONDS)
        _, received, _ = await pipe.execute()
    if received < total:
        return ChunkProgress(received=received, total=total)
    parts = await client.hgetall(key)
    await client.delete(key)
    image = "".join(parts[str(index).encode()].decode() for index in range(total))
    query = {
        "prompt": content.get("prompt", ""),
        "query_type": content.get("query_type", "vision"),
        "model_type": content.get("model_type", "worker_node"),
        "model_name": content.get("model_name", ""),
    }
    return ChunkProgress(received=received, total=total, image=image, query=query)
