"""Reassembly of images sent in `vision_chunk` frames (docs/protocol.md §1).

Chunks wait in Redis, not in the consumer, so a reconnecting tab can finish an upload and
an abandoned one expires on its own (RENTAHAL_UPLOAD_TTL_SECONDS after its last chunk).
What a user can leave there is bounded: RENTAHAL_MAX_UPLOADS_PER_USER unfinished uploads,
each at most the base64 of RENTAHAL_MAX_IMAGE_BYTES.
"""
import asyncio
import dataclasses
import weakref

import redis.asyncio as aioredis
from django.conf import settings

from rentahal.errors import BrokerError

MAX_CHUNK_CHARS = 1024 * 1024 * 4 // 3 + 4  # base64 of a 1 MiB slice
MAX_CHUNKS = 64
# Room for the "data:image/png;base64," prefix a browser puts before the first chunk.
DATA_URL_PREFIX_CHARS = 256

# One chunk, checked against its upload and stored in one step, so two tabs of a user
# cannot both complete an upload or slip past the per-user cap between a check and a write.
# KEYS[1]: the upload, a hash of "chunk:<index>" -> data plus "total", "chars" and "received".
# KEYS[2]: the user's unfinished uploads, a sorted set of image ids scored by expiry time.
# ARGV: chunk index, total chunks, data, image id, max chars, max uploads, ttl seconds.
# Returns {outcome, detail[, image]}: stored (received count), complete (received, image),
# too_many_uploads, total_changed (the upload's total), chunk_conflict, too_large (chars).
# An inconsistent or oversized upload is dropped whole: its chunks can no longer make an image.
STORE_CHUNK = """
local upload, uploads = KEYS[1], KEYS[2]
local index, total, data, image_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local max_chars, max_uploads, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local now = tonumber(redis.call('TIME')[1])
local function drop(outcome, detail)
  redis.call('DEL', upload)
  redis.call('ZREM', uploads, image_id)
  return {outcome, detail}
end
redis.call('ZREMRANGEBYSCORE', uploads, '-inf', now)
local known_total = redis.call('HGET', upload, 'total')
if not known_total then
  if redis.call('ZCARD', uploads) >= max_uploads then return {'too_many_uploads', max_uploads} end
  redis.call('HSET', upload, 'total', total)
elseif known_total ~= total then
  return drop('total_changed', known_total)
end
local field = 'chunk:' .. index
local sent = redis.call('HGET', upload, field)
if not sent then
  local chars = redis.call('HINCRBY', upload, 'chars', #data)
  if chars > max_chars then return drop('too_large', chars) end
  redis.call('HSET', upload, field, data)
  redis.call('HINCRBY', upload, 'received', 1)
elseif sent ~= data then
  return drop('chunk_conflict', index)
end
local received = tonumber(redis.call('HGET', upload, 'received'))
if received == tonumber(total) then
  local parts = {}
  for i = 0, received - 1 do parts[#parts + 1] = redis.call('HGET', upload, 'chunk:' .. i) end
  redis.call('DEL', upload)
  redis.call('ZREM', uploads, image_id)
  return {'complete', received, table.concat(parts)}
end
redis.call('EXPIRE', upload, ttl)
redis.call('ZADD', uploads, now + ttl, image_id)
redis.call('EXPIRE', uploads, ttl)
return {'stored', received}
"""

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
        chunk_id = content["chunk_id"]
        total = content["total_chunks"]
        image_id = str(content["image_id"])
        data = content["chunk_data"]
    except KeyError:
        raise BrokerError("A vision_chunk needs chunk_id, total_chunks, chunk_data and image_id.", code="bad_chunk") from None
    if not all(isinstance(number, int) and not isinstance(number, bool) for number in (chunk_id, total)):
        raise BrokerError("chunk_id and total_chunks must be whole numbers.", code="bad_chunk")
    if not isinstance(data, str) or len(data) > MAX_CHUNK_CHARS:
        raise BrokerError("chunk_data must be a base64 string of at most 1 MiB.", code="bad_chunk")
    if not 1 <= total <= MAX_CHUNKS or not 0 <= chunk_id < total:
        raise BrokerError(f"chunk_id must be below total_chunks, which is 1 to {MAX_CHUNKS}.", code="bad_chunk")
    if not 1 <= len(image_id) <= 64:
        raise BrokerError("image_id must be 1 to 64 characters.", code="bad_chunk")
    return chunk_id, total, image_id, data


def max_image_chars() -> int:
    """Return the most base64 characters an upload may hold: RENTAHAL_MAX_IMAGE_BYTES encoded."""
    return 4 * -(-settings.RENTAHAL_MAX_IMAGE_BYTES // 3) + DATA_URL_PREFIX_CHARS


def refusal(outcome: str, detail: int | bytes, total: int) -> BrokerError:
    """Return the error for a chunk the upload script refused."""
    if outcome == "too_many_uploads":
        return BrokerError(
            f"You already have {detail} unfinished image uploads; finish one or wait for it to expire.",
            code="too_many_uploads",
        )
    if outcome == "too_large":
        return BrokerError(
            f"The image sent so far is about {detail * 3 // 4} bytes; the limit is "
            f"{settings.RENTAHAL_MAX_IMAGE_BYTES} bytes. The upload was dropped.",
            code="image_too_large",
        )
    if outcome == "total_changed":
        problem = f"total_chunks {total} does not match the upload's {detail.decode()}"
    else:
        problem = f"chunk {detail.decode()} was already sent with different data"
    return BrokerError(f"{problem}; the upload was dropped, send the image again.", code="inconsistent_chunks")


async def store_vision_chunk(guid: str, content: dict) -> ChunkProgress:
    """Keep one chunk; when the last arrives, return the whole image and the query fields."""
    chunk_id, total, image_id, data = read_chunk_frame(content)
    client = redis_client()
    outcome, detail, *image = await client.register_script(STORE_CHUNK)(
        keys=[f"rentahal:vision:{guid}:{image_id}", f"rentahal:vision:{guid}"],
        args=[chunk_id, total, data, image_id, max_image_chars(), settings.RENTAHAL_MAX_UPLOADS_PER_USER,
              settings.RENTAHAL_UPLOAD_TTL_SECONDS],
    )
    outcome = outcome.decode()
    if outcome == "stored":
        return ChunkProgress(received=detail, total=total)
    if outcome != "complete":
        raise refusal(outcome, detail, total)
    query = {
        "prompt": content.get("prompt", ""),
        "query_type": content.get("query_type", "vision"),
        "model_type": content.get("model_type", "worker_node"),
        "model_name": content.get("model_name", ""),
        "conversation_id": content.get("conversation_id"),
    }
    return ChunkProgress(received=detail, total=total, image=image[0].decode(), query=query)
