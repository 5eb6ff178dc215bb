"""Per-key limits of the HTTP doors, held in Redis so they are exact across every web
process: requests in any 60 seconds, requests unanswered at once, and spend per UTC day
and in total. One Lua script checks and takes them together (`admit`), so 100 concurrent
requests through two processes against a limit of 10 let exactly 10 in.

Spend is counted in Redis when a key's query is charged (`record_spend`, called by the
finish write); the ledger in Postgres stays the record of what was charged.
"""
import dataclasses
import datetime
import functools
import uuid
from decimal import Decimal

import redis
from django.conf import settings

from accounts.models import ApiKey
from rentahal.errors import BrokerError, TooManyQueries
from rentahal.queues import client_for_url

WINDOW_MS = 60_000
# Spend of a day is kept a day past its end, for whoever reads it late.
DAILY_TTL_SECONDS = 2 * 86400

ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, max_in_flight = tonumber(ARGV[2]), tonumber(ARGV[3])
if ARGV[4] ~= '' and tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[4]) then
  return {1, 0}
end
if ARGV[5] ~= '' and tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[5]) then
  return {2, 0}
end
if max_in_flight > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= max_in_flight then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {3, 1000}
  end
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60000)
  if redis.call('ZCARD', KEYS[1]) >= rpm then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {4, tonumber(oldest[2]) + 60000 - now}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 60000)
end
if max_in_flight > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[1])
  redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[6]))
end
return {0, 0}
"""


class KeyLimitReached(TooManyQueries):
    """A key over its requests per minute or its requests in flight."""

    code = "rate_limited"


class OverBudget(BrokerError):
    """A key that has spent its daily or total budget: nothing more is accepted with it."""

    code = "over_budget"
    http_status = 402


@dataclasses.dataclass(frozen=True)
class Admission:
    """A request let in under its key's limits; `release` it when its answer is out."""

    key_id: int
    request_id: str


def connection() -> redis.Redis:
    return client_for_url(settings.REDIS_URL, decode_responses=True)


@functools.lru_cache(maxsize=4)
def admit_script(url: str):
    return client_for_url(url, decode_responses=True).register_script(ADMIT)


def redis_keys(key_id: int, day: datetime.date | None = None) -> list[str]:
    day = day or datetime.datetime.now(datetime.UTC).date()
    base = f"apikey.{key_id}"
    return [f"{base}.window", f"{base}.in_flight", f"{base}.spent", f"{base}.spent.{day:%Y%m%d}"]


def lease_milliseconds() -> int:
    """Return how long an admission holds its in-flight place if it is never released (its process died)."""
    return int((settings.RENTAHAL_JOB_TIMEOUT + 60) * 1000)


def admit(key: ApiKey) -> Admission:
    """Take one request of the key's limits, or refuse: 402 over a budget, 429 over a rate."""
    request_id = uuid.uuid4().hex
    status, wait_ms = admit_script(settings.REDIS_URL)(
        keys=redis_keys(key.pk),
        args=[
            request_id,
            key.requests_per_minute,
            key.max_in_flight,
            "" if key.daily_budget is None else str(key.daily_budget),
            "" if key.total_budget is None else str(key.total_budget),
            lease_milliseconds(),
        ],
    )
    if status == 1:
        raise OverBudget(f"This API key has spent its daily budget of {key.daily_budget}; it renews at 00:00 UTC.")
    if status == 2:
        raise OverBudget(f"This API key has spent its total budget of {key.total_budget}.")
    if status == 3:
        raise KeyLimitReached(
            f"This API key has {key.max_in_flight} requests unanswered, its limit; try again when one is answered.",
            retry_after=wait_ms / 1000,
        )
    if status == 4:
        raise KeyLimitReached(
            f"This API key made {key.requests_per_minute} requests in the last minute, its limit.",
            retry_after=max(wait_ms, 1) / 1000,
        )
    return Admission(key.pk, request_id)


def release(admission: Admission) -> None:
    connection().zrem(redis_keys(admission.key_id)[1], admission.request_id)


def record_spend(spends: list[tuple[int, Decimal]]) -> None:
    """Add what each key's queries were just charged to its daily and total spend."""
    if not spends:
        return
    with connection().pipeline(transaction=False) as pipeline:
        for key_id, amount in spends:
            _, _, total, daily = redis_keys(key_id)
            pipeline.incrbyfloat(total, float(amount))
            pipeline.incrbyfloat(daily, float(amount))
            pipeline.expire(daily, DAILY_TTL_SECONDS)
        pipeline.execute()


def spent(key_id: int) -> tuple[float, float]:
    """Return the key's spend today and in total, as Redis counts it."""
    _, _, total, daily = redis_keys(key_id)
    today, overall = connection().mget(daily, total)
    return float(today or 0), float(overall or 0)
