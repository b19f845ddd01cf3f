"""Redis client wiring: explicit timeouts, retries on connection errors, health checks.

One pool per process. redis-py's asyncio connections are returned to the pool in a
`finally`, and a connection whose command was cancelled mid-flight is disconnected rather
than reused, so a cancelled task never hands a half-read reply to the next caller.

`RedisMeter` times a service's Redis round trips (`tongda_redis_command_seconds{service,
operation}`, one fixed operation name per call site) and keeps `tongda_redis_up{service}`: 1
after a round trip or ping that got an answer (an error reply is an answer), 0 after one that
met a connection error or timeout.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.config import CommonSettings
from shared.metrics import REDIS_OPERATIONS, REDIS_SECONDS, REDIS_UP
from shared.security import redis_connection_options

T = TypeVar("T")
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


def make_redis(settings: CommonSettings, max_connections: int = 64) -> Redis:
    """A client whose pool waits (up to the socket timeout) for a free connection when all
    are busy, instead of failing the command: bursts queue, they do not error."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections,
        timeout=settings.redis_socket_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
        **redis_connection_options(settings),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class RedisMeter:
    """Times one service's Redis round trips; see the module docstring. Operation names are
    those of shared.metrics.REDIS_OPERATIONS only (a KeyError otherwise): few, fixed values."""

    def __init__(self, service: str) -> None:
        self.service = service
        # children made on first use: no series for an operation this service never runs,
        # and no `up` before the first answer or error
        self._up: Any = None
        self._seconds: dict[str, Any] = {}

    def _histogram(self, operation: str) -> Any:
        histogram = self._seconds.get(operation)
        if histogram is None:
            if operation not in REDIS_OPERATIONS:
                raise KeyError(f"not a Redis operation of shared.metrics: {operation!r}")
            histogram = REDIS_SECONDS.labels(service=self.service, operation=operation)
            self._seconds[operation] = histogram
            self._up = REDIS_UP.labels(service=self.service)
        return histogram

    async def timed(self, operation: str, call: Awaitable[T]) -> T:
        """Await one round trip (`call`), observing its duration under `operation`."""
        histogram = self._histogram(operation)
        started = time.perf_counter()
        try:
            result = await call
        except _UNREACHABLE:
            self._up.set(0)
            raise
        except ResponseError:  # an error reply (NOSCRIPT, WRONGTYPE...): Redis answered
            histogram.observe(time.perf_counter() - started)
            self._up.set(1)
            raise
        histogram.observe(time.perf_counter() - started)
        self._up.set(1)
        return result

    async def ping(self, redis: Redis) -> None:
        """PING, timed as `ping` (readiness checks)."""
        await self.timed("ping", redis.ping())


async def durability_warning(redis: Redis) -> str | None:
    """What is wrong with the server's persistence for tongda's state, or None: the router
    needs `appendonly yes` and `appendfsync always` (docs/operations.md; a server that may
    lose its last second of acknowledged writes can make the router produce an effect twice).
    None also when the server does not let us ask (CONFIG disabled, as on managed Redis)."""
    try:
        conf = await redis.config_get("append*")
    except Exception:
        return None
    values = {_text(k): _text(v) for k, v in conf.items()}
    if values.get("appendonly") != "yes" or values.get("appendfsync") != "always":
        return (
            f"Redis runs with appendonly={values.get('appendonly')} "
            f"appendfsync={values.get('appendfsync')}: a crash can lose acknowledged state and "
            "the router may then produce an effect twice; run it with appendonly yes and "
            "appendfsync always (docs/operations.md)"
        )
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
