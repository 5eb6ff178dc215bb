"""The line of queries waiting for a busy pool, in Redis, shared by every realm-worker process.

When every member a query may use is at its concurrency cap, the queries that want the same
members wait in one line, and only the one at its head may take the next free slot. The
line is ordered by party (the user) first: a waiter's place is how many of its party's
queries were already waiting when it joined, then when it joined. So a flooding user's
tenth waiting query stands behind every other user's first, and another user's next query
waits for at most one slot per user ahead of it, however long the flood.

A waiter renews its place each time it looks; a place not renewed for `ttl` (its process
died) is dropped by the next look, so a killed worker cannot block the line.
"""
from __future__ import annotations

import functools

from django.conf import settings
from redis.commands.core import Script

from pools.state import PREFIX, client
from rentahal.queues import client_for_url

# KEYS = the line (a sorted set) and its places' expiries (a hash); ARGV = the waiter
# ("party|id"), its party, how long its place lasts (ms). Drops expired places, joins the
# waiter if it is new, and returns its rank (0 = its turn). Times are Redis's own clock, so
# realm workers on several hosts agree.
TAKE_PLACE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local places = redis.call('HGETALL', KEYS[2])
for i = 1, #places, 2 do
  if tonumber(places[i + 1]) < now and places[i] ~= ARGV[1] then
    redis.call('HDEL', KEYS[2], places[i])
    redis.call('ZREM', KEYS[1], places[i])
  end
end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  local prefix = ARGV[2] .. '|'
  local ahead = 0
  for _, waiter in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if string.sub(waiter, 1, #prefix) == prefix then
      ahead = ahead + 1
    end
  end
  redis.call('ZADD', KEYS[1], ahead * 1e13 + now, ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], now + tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return redis.call('ZRANK', KEYS[1], ARGV[1])
"""


@functools.lru_cache(maxsize=4)
def take_place_script(url: str) -> Script:
    return client_for_url(url, decode_responses=True).register_script(TAKE_PLACE)


class Line:
    """One waiter's place in the line `name` (the realm and what the query asks for)."""

    def __init__(self, name: str, *, party: str, waiter: str, ttl: float):
        self.keys = [f"{PREFIX}:line:{name}", f"{PREFIX}:line:{name}:places"]
        self.party = party
        self.waiter = f"{party}|{waiter}"
        self.ttl = ttl
        self.joined = False

    @property
    def key(self) -> str:
        """The line's key, which exists while anybody waits in it: a query may then not try
        for a slot without joining (`pools.state.Fence`)."""
        return self.keys[0]

    def rank(self) -> int:
        """Take or renew the waiter's place and return how many stand ahead of it."""
        script = take_place_script(settings.REDIS_URL)
        self.joined = True
        return int(script(keys=self.keys, args=[self.waiter, self.party, int(self.ttl * 1000)]))

    def leave(self) -> None:
        if not self.joined:
            return
        self.joined = False
        with client().pipeline(transaction=False) as pipeline:
            pipeline.zrem(self.keys[0], self.waiter)
            pipeline.hdel(self.keys[1], self.waiter)
            pipeline.execute()
