"""A token bucket in Redis, shared by every replica that sends on one provider account.

A provider contract allows N messages/s per account, however many replicas send on it. Each
`acquire()` runs one Lua script that refills the bucket from the time elapsed (Redis `TIME`,
so replicas' clocks do not matter), then takes a token: at once if one is there, otherwise
as a reservation, the bucket going negative and the caller told how long to wait for its
turn. Callers queue in the order they reserved, and no polling happens while they wait.
A reservation longer than `max_wait_s` takes nothing and fails with `RateLimited`.
`pause(seconds)` pushes every replica back when the provider says it is throttling us.
"""

from __future__ import annotations

import asyncio
import math

from redis.asyncio import Redis

ACQUIRE_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local max_wait = tonumber(ARGV[4])
local pause = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
end
local wait = 0
if pause > 0 then
  tokens = math.min(tokens, -pause * rate)
else
  local after = tokens - want
  if after < 0 then wait = -after / rate end
  if wait > max_wait then
    return '-1'
  end
  tokens = after
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 60000)
return tostring(wait)
"""


class RateLimited(Exception):
    """No token within the longest wait allowed."""


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` stored, in the Redis hash `key`."""

    def __init__(
        self,
        redis: Redis,
        key: str,
        rate_per_s: float,
        burst: int = 0,
        max_wait_s: float = 10.0,
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.redis = redis
        self.key = key
        self.rate = rate_per_s
        self.burst = burst or max(1, math.ceil(rate_per_s / 10))
        self.max_wait_s = max_wait_s
        self._script = redis.register_script(ACQUIRE_LUA)

    async def reserve(self, tokens: int = 1, max_wait_s: float | None = None) -> float:
        """Take `tokens`; return the seconds to wait before using them (0: now). Raise
        RateLimited, taking nothing, if that would be longer than `max_wait_s`."""
        limit = self.max_wait_s if max_wait_s is None else max_wait_s
        raw = await self._script(keys=[self.key], args=[self.rate, self.burst, tokens, limit, 0])
        wait = float(raw)
        if wait < 0:
            raise RateLimited(f"no token within {limit:g} s at {self.rate:g}/s")
        return wait

    async def acquire(self, tokens: int = 1, max_wait_s: float | None = None) -> None:
        """Take `tokens`, waiting for their turn (see `reserve`)."""
        wait = await self.reserve(tokens, max_wait_s)
        if wait > 0:
            await asyncio.sleep(wait)

    async def pause(self, seconds: float) -> None:
        """The provider throttled us: nobody gets a token for about `seconds`."""
        await self._script(keys=[self.key], args=[self.rate, self.burst, 0, 0, seconds])
