"""The router SIGKILLed twice during a 2,000-notification run of the full stack (router and
channel services as processes), on the local Redis Cluster instead of a single Redis: every
notification reaches exactly one final status and no dispatch reaches a provider twice
(tests/test_fault_router_kill.py, collected again here with the stack on the cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import RedisCluster

from shared.config import RouterSettings
from shared.redis import make_redis
from tests.conftest import StackFactory
from tests.test_fault_router_kill import (  # noqa: F401
    test_router_sigkilled_twice_loses_and_duplicates_nothing,
)
from tools.devstack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(480)]


@pytest.fixture
async def stack_factory(stack_factory: StackFactory, redis_cluster: str) -> StackFactory:
    """Stacks whose services use the session's Redis Cluster (emptied first: a stack uses
    the default key prefix)."""
    client = make_redis(RouterSettings(api_token="t", redis_url=redis_cluster))
    assert isinstance(client, RedisCluster)
    try:
        await client.flushall()
    finally:
        await client.aclose()

    async def start(**overrides: Any) -> Stack:
        return await stack_factory(redis_url=redis_cluster, **overrides)

    return start
