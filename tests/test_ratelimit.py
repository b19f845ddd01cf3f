"""The Redis token bucket shared by replicas: two buckets on one key (two replicas, two
Redis clients) stay together under the rate; waits are bounded; a pause holds everyone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared.channel.ratelimit import RateLimited, TokenBucket

KEY = "t:ratelimit:acct"


@pytest.fixture
async def replica(redis: Redis, redis_server: str) -> AsyncIterator[Redis]:
    """A second Redis client: another replica's connection pool."""
    client = Redis.from_url(redis_server)
    try:
        yield client
    finally:
        await client.aclose()


async def test_two_replicas_together_stay_under_the_rate(redis: Redis, replica: Redis) -> None:
    rate, burst, window = 100.0, 5, 1.0
    buckets = [TokenBucket(redis, KEY, rate, burst), TokenBucket(replica, KEY, rate, burst)]
    loop = asyncio.get_running_loop()
    taken: list[tuple[int, float]] = []
    began = loop.time()

    async def sender(which: int) -> None:
        while loop.time() - began < window:
            await buckets[which].acquire()
            taken.append((which, loop.time()))

    await asyncio.gather(*(sender(i % 2) for i in range(16)))  # 8 senders per replica
    in_window = [t for t in taken if t[1] - began <= window]
    allowed = rate * window + burst
    assert len(in_window) <= allowed * 1.05, (len(in_window), allowed)
    assert len(in_window) >= rate * window * 0.8, len(in_window)  # limited, not starved
    per_replica = [sum(1 for w, _ in in_window if w == i) for i in (0, 1)]
    assert min(per_replica) >= 0.3 * len(in_window), per_replica  # shared, not hogged


async def test_a_wait_longer_than_allowed_fails_and_takes_nothing(redis: Redis) -> None:
    bucket = TokenBucket(redis, KEY, rate_per_s=2, burst=1, max_wait_s=0.1)
    assert await bucket.reserve() == 0  # the stored token
    with pytest.raises(RateLimited):
        await bucket.reserve()  # the next one is ~0.5 s away
    wait = await bucket.reserve(max_wait_s=5)
    assert 0.3 < wait <= 0.5  # the refused reservation took nothing


async def test_pause_holds_every_replica(redis: Redis, replica: Redis) -> None:
    first = TokenBucket(redis, KEY, rate_per_s=1000, burst=10)
    second = TokenBucket(replica, KEY, rate_per_s=1000, burst=10)
    assert await second.reserve() == 0
    await first.pause(0.5)
    wait = await second.reserve()
    assert 0.3 < wait <= 0.51  # about 0.5, less the time between the two calls


async def test_accounts_do_not_share_tokens(redis: Redis) -> None:
    a = TokenBucket(redis, f"{KEY}:a", rate_per_s=1, burst=1)
    b = TokenBucket(redis, f"{KEY}:b", rate_per_s=1, burst=1)
    assert await a.reserve() == 0
    assert await b.reserve() == 0
    assert await a.reserve() > 0.5  # about 1 s, less the time between the calls


async def test_rate_must_be_positive(redis: Redis) -> None:
    with pytest.raises(ValueError):
        TokenBucket(redis, KEY, rate_per_s=0)
