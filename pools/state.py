"""The runtime state every process shares, in Redis: in-flight leases, health scores and the
health rules' blacklist, cooldowns, latency and success EWMAs, round-robin tickets, affinity and
chosen counts. Postgres holds only configuration (and the operator's blacklist), so a probe or
an outcome never touches a row or the pool-config version.

Calls are synchronous redis-py on purpose: a loopback round trip is ~0.1 ms, cheaper than
the thread hop an async caller would otherwise pay, and it works the same from async jobs,
views, the admin and management commands.
"""
from __future__ import annotations

import dataclasses
import functools
import time
import typing
import uuid

import redis
from django.conf import settings
from redis.commands.core import Script

from pools.selection import MAX_HEALTH, MemberState, Plan, SharedState
from rentahal.queues import client_for_url

PREFIX = "pools"
DIRECT = "direct"

# Count a worker's live leases after dropping expired ones; refuse a new one at the cap.
# A lease is a member of a sorted set scored by its expiry, so a process that dies while
# holding one cannot leave the count wrong (or negative) for longer than the lease lasts.
# A granted lease is tallied as a choice in the same call: KEYS = lease key, then the chosen
# hash, the ticket to advance and the affinity key, each present when its flag in ARGV[6..8]
# is '1'; ARGV[5] is the worker's name and ARGV[9] the affinity TTL.
ACQUIRE_LEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local cap = tonumber(ARGV[4])
if cap > 0 and redis.call('ZCARD', KEYS[1]) >= cap then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(ARGV[2]) * 1000) + 1000)
local key = 2
if ARGV[6] == '1' then
  redis.call('HINCRBY', KEYS[key], ARGV[5], 1)
  key = key + 1
end
if ARGV[7] == '1' then
  redis.call('INCR', KEYS[key])
  key = key + 1
end
if ARGV[8] == '1' then
  redis.call('SET', KEYS[key], ARGV[5], 'EX', ARGV[9])
end
return 1
"""

# Settle calls that ended, in one round trip: KEYS are, per call, the worker's hash and its
# lease set; ARGV[1] is alpha, then per call three values: the lease to release ('' none),
# the outcome to fold into the worker's EWMAs (1 answered, 0 a server fault, '' not counted)
# and the latency ('' unknown). Returns, per call, the worker's consecutive server faults.
SETTLE_CALLS = """
local alpha = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local worker, leases = KEYS[2 * i - 1], KEYS[2 * i]
  local lease, ok, latency = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  if lease ~= '' then redis.call('ZREM', leases, lease) end
  local failures = 0
  if ok ~= '' then
    ok = tonumber(ok)
    local old = redis.call('HGET', worker, 'success')
    local success = ok
    if old then success = alpha * ok + (1 - alpha) * tonumber(old) end
    redis.call('HSET', worker, 'success', success)
    if latency ~= '' then
      latency = tonumber(latency)
      local previous = redis.call('HGET', worker, 'latency')
      if previous then latency = alpha * latency + (1 - alpha) * tonumber(previous) end
      redis.call('HSET', worker, 'latency', latency)
    end
    if ok == 1 then
      redis.call('HSET', worker, 'failures', 0)
    else
      failures = redis.call('HINCRBY', worker, 'failures', 1)
    end
  end
  out[i] = failures
end
return out
"""


# Change a worker's health score by ARGV[1], kept within 0 and ARGV[2] (a missing score is
# ARGV[2]); a score that reaches 0 blacklists the worker. ARGV[4], when not '', is the time the
# worker answered its health route: that ends its cooldown and stamps `last_active`, and a
# blacklisted worker comes back at ARGV[3] instead of gaining. Returns 'blacklisted' or
# 'restored' when this call changed the blacklist, nothing otherwise, so exactly one caller
# learns of each change however many adjust the worker at once.
ADJUST_HEALTH = """
local full = tonumber(ARGV[2])
local score = tonumber(redis.call('HGET', KEYS[1], 'score') or full)
local was_blacklisted = redis.call('HEXISTS', KEYS[1], 'blacklisted') == 1
if ARGV[4] ~= '' then
  redis.call('HDEL', KEYS[1], 'cooldown_until', 'cooldown_kind', 'cooldown_reason')
  redis.call('HSET', KEYS[1], 'last_active', ARGV[4])
  if was_blacklisted then
    redis.call('HDEL', KEYS[1], 'blacklisted')
    redis.call('HSET', KEYS[1], 'score', ARGV[3])
    return 'restored'
  end
end
score = math.min(math.max(score + tonumber(ARGV[1]), 0), full)
redis.call('HSET', KEYS[1], 'score', score)
if score <= 0 and not was_blacklisted then
  redis.call('HSET', KEYS[1], 'blacklisted', 1)
  return 'blacklisted'
end
"""


# Everything a selection reads, in one call. KEYS = the fence's keys (the pool-config version
# key when ARGV[5] is not '', then the waiting line's key when ARGV[6] is '1'), then worker key,
# lease key for each of ARGV[2] members, then each pool's ticket key (followed by its affinity
# key when ARGV[4] is '1'). A fence that does not hold returns {'configuration'} (the version
# is no longer ARGV[5]) or {'line'} (queries wait in the line) and reads and takes nothing.
# Otherwise returns '', then each member's cooldown, EWMAs, health score, blacklist and live
# lease count, then each pool's ticket and remembered worker. The ticket of the pool at
# position ARGV[3] (1-based; 0 for none) is taken with INCR, so two processes selecting at
# once get different tickets.
READ_STATE = """
local first = 1
if ARGV[5] ~= '' then
  if redis.call('GET', KEYS[first]) ~= ARGV[5] then return {'configuration'} end
  first = first + 1
end
if ARGV[6] == '1' then
  if redis.call('EXISTS', KEYS[first]) == 1 then return {'line'} end
  first = first + 1
end
local out = {''}
local members = tonumber(ARGV[2])
for i = first, first + 2 * members - 1, 2 do
  local fields = redis.call('HMGET', KEYS[i], 'cooldown_until', 'cooldown_kind', 'latency', 'success', 'score', 'blacklisted')
  for j = 1, 6 do out[#out + 1] = fields[j] or '' end
  out[#out + 1] = redis.call('ZCOUNT', KEYS[i + 1], ARGV[1], '+inf')
end
local advance = tonumber(ARGV[3])
local stride = 1
if ARGV[4] == '1' then stride = 2 end
local pool = 0
for i = first + 2 * members, #KEYS, stride do
  pool = pool + 1
  if pool == advance then
    out[#out + 1] = redis.call('INCR', KEYS[i])
  else
    out[#out + 1] = redis.call('GET', KEYS[i]) or ''
  end
  if stride == 2 then
    out[#out + 1] = redis.call('GET', KEYS[i + 1]) or ''
  else
    out[#out + 1] = ''
  end
end
return out
"""


def client() -> redis.Redis:
    return client_for_url(settings.REDIS_URL, decode_responses=True)


class Scripts(typing.NamedTuple):
    acquire_lease: Script
    settle_calls: Script
    read_state: Script
    adjust_health: Script


@functools.lru_cache(maxsize=4)
def scripts_for(url: str) -> Scripts:
    """Return the scripts registered on the client of `url`.

    Each is called on the client itself, never inside a pipeline: redis-py sends SCRIPT
    EXISTS before every pipeline that holds a script, a second round trip per call, while a
    direct call sends EVALSHA alone and loads the script only if Redis answers NOSCRIPT.
    """
    connection = client_for_url(url, decode_responses=True)
    return Scripts(*(connection.register_script(script) for script in (ACQUIRE_LEASE, SETTLE_CALLS, READ_STATE, ADJUST_HEALTH)))


def worker_key(name: str) -> str:
    return f"{PREFIX}:w:{name}"


def lease_key(name: str) -> str:
    return f"{PREFIX}:lease:{name}"


def ticket_key(pool_id: int) -> str:
    return f"{PREFIX}:rr:{pool_id}"


def chosen_key(pool_id: int | None) -> str:
    return f"{PREFIX}:chosen:{pool_id if pool_id is not None else DIRECT}"


def affinity_key_for(pool_id: int, key: str) -> str:
    return f"{PREFIX}:aff:{pool_id}:{key}"


# -- reading state for a selection ----------------------------------------------------------


class ConfigurationChanged(Exception):
    """The pool configuration a plan was made from is no longer current: plan again."""


class LineOccupied(Exception):
    """Queries wait in the line the read was fenced by: the selection waits its turn in it."""


@dataclasses.dataclass(frozen=True)
class Fence:
    """What a selection's read checks before it reads or takes anything, in the same round
    trip: that the pool configuration is still at `version` (the value of `version_key`;
    blank: not checked) and, given `line_key`, that nobody waits in that line."""

    version_key: str = ""
    version: str = ""
    line_key: str = ""


def read_state(
    plan: Plan, *, affinity_key: str = "", advance_pool: int | None = None, fence: Fence = Fence()
) -> SharedState:
    """Read everything a selection over `plan` needs, in one round trip (one script).

    The round-robin ticket of `advance_pool` is taken (INCR) in the same call, so two
    processes selecting at once get different tickets; other pools' tickets are only read.
    Raise ConfigurationChanged or LineOccupied when `fence` does not hold; then nothing was
    read or taken.
    """
    now = time.time()
    names = plan.worker_names
    pools = plan.pools
    keys = ([fence.version_key] if fence.version else []) + ([fence.line_key] if fence.line_key else [])
    keys += [key for name in names for key in (worker_key(name), lease_key(name))]
    for pool in pools:
        keys.append(ticket_key(pool.id))
        if affinity_key:
            keys.append(affinity_key_for(pool.id, affinity_key))
    advance = next((position for position, pool in enumerate(pools, 1) if pool.id == advance_pool), 0)
    args = [now, len(names), advance, 1 if affinity_key else 0, fence.version, 1 if fence.line_key else 0]
    verdict, *flat = scripts_for(settings.REDIS_URL).read_state(keys=keys, args=args)
    if verdict == "configuration":
        raise ConfigurationChanged(fence.version)
    if verdict == "line":
        raise LineOccupied(fence.line_key)
    state = SharedState(now=now, affinity_key=affinity_key)
    for index, name in enumerate(names):
        cooldown_until, kind, latency, success, score, blacklisted, count = flat[7 * index : 7 * index + 7]
        state.members[name] = MemberState(
            in_flight=int(count),
            cooldown_until=float(cooldown_until or 0),
            cooldown_kind=kind or "",
            latency=float(latency) if latency else None,
            success=float(success) if success else None,
            health_score=float(score) if score else MAX_HEALTH,
            is_blacklisted=bool(blacklisted),
        )
    tail = 7 * len(names)
    for index, pool in enumerate(pools):
        ticket, remembered = flat[tail + 2 * index], flat[tail + 2 * index + 1]
        state.tickets[pool.id] = int(ticket or 0) + (0 if pool.id == advance_pool else 1)
        if remembered:
            state.affinity[pool.id] = remembered
    return state


# -- leases (in-flight counts) --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Choice:
    """How a granted lease is tallied: the pool it was chosen in (None: outside any pool), and
    whether to remember the worker for `affinity_key` and advance a fallback pool's ticket."""

    pool_id: int | None
    affinity_key: str = ""
    remember: bool = False
    advance_pool: int | None = None


def acquire_lease(worker: str, *, cap: int, ttl: float, choice: Choice | None = None) -> str | None:
    """Take a slot on the worker and return its lease id, or None when it is at its cap.

    With `choice`, a granted lease is also counted as chosen (and the affinity and ticket
    updated) in the same round trip; a refused one counts nothing.
    """
    lease = uuid.uuid4().hex
    now = time.time()
    keys = [lease_key(worker)]
    counts = remembers = advances = False
    if choice is not None:
        counts = True
        keys.append(chosen_key(choice.pool_id))
        advances = choice.advance_pool is not None
        if advances:
            keys.append(ticket_key(choice.advance_pool))
        remembers = choice.remember and bool(choice.affinity_key) and choice.pool_id is not None
        if remembers:
            keys.append(affinity_key_for(choice.pool_id, choice.affinity_key))
    flags = [1 if flag else 0 for flag in (counts, advances, remembers)]
    granted = scripts_for(settings.REDIS_URL).acquire_lease(
        keys=keys, args=[now, now + ttl, lease, cap, worker, *flags, settings.RENTAHAL_AFFINITY_TTL]
    )
    return lease if granted else None


def renew_lease(worker: str, lease: str, *, ttl: float) -> None:
    """Push the lease's expiry `ttl` seconds ahead; a lease already released stays released."""
    client().zadd(lease_key(worker), {lease: time.time() + ttl}, xx=True)


def release_lease(worker: str, lease: str) -> None:
    client().zrem(lease_key(worker), lease)


def in_flight(worker: str) -> int:
    return int(client().zcount(lease_key(worker), time.time(), "+inf"))


# -- after a call ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CallOutcome:
    """How a call to a worker ended: answered (`ok`), a server fault, or neither that counts
    (`counted=False`: the caller's own bad request); `lease` is the call's slot to free."""

    worker: str
    ok: bool
    latency: float | None = None
    lease: str = ""
    counted: bool = True


def settle_calls(outcomes: list[CallOutcome]) -> list[int]:
    """Free the calls' leases and fold their outcomes into the workers' EWMAs, all in one
    round trip (the jobs of a worker process settle theirs in batches); return each worker's
    consecutive server faults after its call."""
    if not outcomes:
        return []
    keys = [key for outcome in outcomes for key in (worker_key(outcome.worker), lease_key(outcome.worker))]
    args: list = [settings.RENTAHAL_EWMA_ALPHA]
    for outcome in outcomes:
        counted = (1 if outcome.ok else 0) if outcome.counted else ""
        args += [outcome.lease, counted, "" if outcome.latency is None else outcome.latency]
    return [int(failures) for failures in scripts_for(settings.REDIS_URL).settle_calls(keys=keys, args=args)]


def set_cooldown(worker: str, *, until: float, kind: str, reason: str) -> None:
    client().hset(worker_key(worker), mapping={"cooldown_until": until, "cooldown_kind": kind, "cooldown_reason": reason})


def clear_cooldown(worker: str) -> None:
    client().hdel(worker_key(worker), "cooldown_until", "cooldown_kind", "cooldown_reason")


def change_health(worker: str, change: float) -> str | None:
    """Change the worker's health score by `change`, kept between 0 and MAX_HEALTH; a score
    that reaches 0 blacklists it. One atomic step, so concurrent probes and outcomes never
    lose an update. Return 'blacklisted' when this change blacklisted the worker, else None."""
    return scripts_for(settings.REDIS_URL).adjust_health(keys=[worker_key(worker)], args=[change, MAX_HEALTH, 0, ""])


def record_answer(worker: str, *, gain: float, restored: float, at: float) -> str | None:
    """Count an answer to the worker's health route at `at`: its cooldown ends, it is stamped
    active, and its score rises by `gain`, or, if the health rules had blacklisted it, it
    comes back at `restored`. Return 'restored' in that case, else None."""
    return scripts_for(settings.REDIS_URL).adjust_health(keys=[worker_key(worker)], args=[gain, MAX_HEALTH, restored, at])


# -- what operators see ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Health:
    """A worker's runtime health: its score, whether the health rules blacklisted it (the
    operator's switch is `Worker.is_blacklisted`), and when it last answered a probe."""

    score: float = MAX_HEALTH
    is_blacklisted: bool = False
    last_active: float | None = None

    @classmethod
    def from_fields(cls, score: str | None, blacklisted: str | None, last_active: str | None) -> Health:
        return cls(
            score=float(score) if score else MAX_HEALTH,
            is_blacklisted=bool(blacklisted),
            last_active=float(last_active) if last_active else None,
        )


def health_of(workers: list[str]) -> dict[str, Health]:
    """Return each worker's runtime health, in one round trip."""
    pipe = client().pipeline(transaction=False)
    for name in workers:
        pipe.hmget(worker_key(name), "score", "blacklisted", "last_active")
    return {name: Health.from_fields(*fields) for name, fields in zip(workers, pipe.execute())}


def member_views(workers: list[str], pool_id: int | None = None) -> dict[str, dict]:
    """Return each worker's live state (health, cooldown, in flight, latency, success, chosen count)."""
    now = time.time()
    pipe = client().pipeline(transaction=False)
    for name in workers:
        pipe.hgetall(worker_key(name))
        pipe.zcount(lease_key(name), now, "+inf")
    pipe.hgetall(chosen_key(pool_id))
    results = pipe.execute()
    chosen = results[-1]
    views = {}
    for index, name in enumerate(workers):
        stats, count = results[2 * index], results[2 * index + 1]
        until = float(stats.get("cooldown_until") or 0)
        health = Health.from_fields(stats.get("score"), stats.get("blacklisted"), stats.get("last_active"))
        views[name] = {
            "health_score": health.score,
            "is_blacklisted": health.is_blacklisted,
            "last_active": health.last_active,
            "cooldown_until": until if until > now else None,
            "cooldown_reason": stats.get("cooldown_reason", "") if until > now else "",
            "in_flight": int(count),
            "latency": float(stats["latency"]) if stats.get("latency") else None,
            "success_rate": float(stats["success"]) if stats.get("success") else None,
            "chosen": int(chosen.get(name, 0)),
        }
    return views
