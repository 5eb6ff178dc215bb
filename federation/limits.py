"""Per-peer limits on the serving side: queries per minute, queries in flight, and spend per
period, each checked and taken in one Redis script so concurrent routes cannot overshoot.
A peer over a limit is refused before any work (429 with Retry-After): local users never
wait behind it. Joins, which no peer signs yet, are limited per source address instead."""
from __future__ import annotations

import decimal
import functools
import math

from django.conf import settings

from federation.actions import PeerOverLimit, TooManyJoins
from federation.models import Peer
from pools.state import client as redis_client

# KEYS: minute counter, in-flight counter, spend total. ARGV: rate, in-flight and spend
# limits, in-flight key lifetime (ms). Returns {0, 0} when taken, else {which, retry ms}.
ACQUIRE = """
local rate = tonumber(redis.call('GET', KEYS[1]) or '0')
if rate >= tonumber(ARGV[1]) then
  return {1, redis.call('PTTL', KEYS[1])}
end
local spent = tonumber(redis.call('GET', KEYS[3]) or '0')
if spent >= tonumber(ARGV[3]) then
  return {3, redis.call('PTTL', KEYS[3])}
end
local flying = tonumber(redis.call('GET', KEYS[2]) or '0')
if flying >= tonumber(ARGV[2]) then
  return {2, 1000}
end
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if redis.call('INCR', KEYS[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], 60000)
end
return {0, 0}
"""
RELEASE = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""
SPEND = """
local total = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return total
"""
# KEYS: the address's join counter. ARGV: joins allowed, window (ms). Returns 0 when taken,
# else the ms until the window ends. The window starts at the address's first join.
JOIN = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if count > tonumber(ARGV[1]) then
  return redis.call('PTTL', KEYS[1])
end
return 0
"""
JOIN_WINDOW_MS = 3600 * 1000
WHAT = {1: "queries per minute", 2: "queries in flight", 3: "spend per period"}


@functools.lru_cache(maxsize=4)
def scripts(url: str):
    client = redis_client()
    return client.register_script(ACQUIRE), client.register_script(RELEASE), client.register_script(SPEND)


@functools.lru_cache(maxsize=4)
def join_script(url: str):
    return redis_client().register_script(JOIN)


def keys(peer: Peer) -> tuple[str, str, str]:
    prefix = f"federation:limits:{peer.federation_id}"
    return f"{prefix}:minute", f"{prefix}:in_flight", f"{prefix}:spent"


def acquire(peer: Peer) -> None:
    """Take one of the peer's slots or raise PeerOverLimit saying which limit and when to retry."""
    acquire_script, _, _ = scripts(settings.REDIS_URL)
    lifetime_ms = int((settings.RENTAHAL_CONNECT_TIMEOUT + settings.RENTAHAL_READ_TIMEOUT + 30) * 1000)
    which, retry_ms = acquire_script(
        keys=list(keys(peer)),
        args=[peer.queries_per_minute, peer.max_in_flight, str(peer.spend_limit), lifetime_ms],
    )
    if which:
        retry = max(1, math.ceil(max(int(retry_ms), 1000) / 1000))
        raise PeerOverLimit(f"{peer.federation_id} is over its limit of {WHAT[int(which)]}.", retry_after=retry)


def take_join(address: str) -> None:
    """Count a join request from `address` (the TCP peer, never a header a client writes) or
    raise TooManyJoins: unsigned joins cost a key check and may write a pending peer each."""
    retry_ms = int(join_script(settings.REDIS_URL)(keys=[f"federation:joins:{address}"], args=[settings.RENTAHAL_FEDERATION_JOINS_PER_HOUR, JOIN_WINDOW_MS]))
    if retry_ms:
        retry = max(1, math.ceil(retry_ms / 1000))
        raise TooManyJoins(f"Too many join requests from {address}; try again in {retry} seconds.", retry_after=retry)


def release(peer: Peer) -> None:
    _, release_script, _ = scripts(settings.REDIS_URL)
    release_script(keys=[keys(peer)[1]])


def add_spend(peer: Peer, amount: decimal.Decimal) -> None:
    """Count what the peer spent with us in the current period (which starts at its first spend)."""
    if amount <= 0:
        return
    _, _, spend_script = scripts(settings.REDIS_URL)
    spend_script(keys=[keys(peer)[2]], args=[str(amount), peer.spend_period_seconds * 1000])
