"""Redis client wiring: explicit timeouts, retries on connection errors, health checks.

One pool per process. redis-py's asyncio connections are returned to the pool in a
`finally`, and a connection whose command was cancelled mid-flight is disconnected rather
than reused, so a cancelled task never hands a half-read reply to the next caller.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.config import CommonSettings
from shared.security import redis_connection_options


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
