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
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.config import CommonSettings
from shared.errors import ConfigError
from shared.metrics import REDIS_OPERATIONS, REDIS_SECONDS, REDIS_UP
from shared.security import redis_connection_options

T = TypeVar("T")
AnyRedis = Redis | RedisCluster  # what make_redis returns: a single Redis or a Redis Cluster
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)


def is_cluster(settings: CommonSettings) -> bool:
    """Whether the settings name a Redis Cluster (`redis_cluster`, or a `+cluster` URL)."""
    return settings.redis_cluster or urlsplit(settings.redis_url).scheme.endswith("+cluster")


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The host:port pairs of a Redis URL, which for a cluster may list several nodes
    (`redis+cluster://h1:p1,h2:p2/`)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for part in netloc.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        try:
            nodes.append((unquote(host.strip("[]")), int(port)))
        except ValueError:
            raise ConfigError(f"TONGDA_REDIS_URL: not a host:port: {part!r}") from None
    return nodes


def make_redis(settings: CommonSettings, max_connections: int = 64) -> Redis:
    """A client whose pool waits (up to the socket timeout) for a free connection when all
    are busy, instead of failing the command: bursts queue, they do not error.

    For a Redis Cluster (`is_cluster`): a `RedisCluster` (typed as `Redis`: the commands
    tongda uses are common to both), with the same timeouts, retries and TLS/ACL options.
    Its pool per node does not wait for a free connection (redis-py raises
    MaxConnectionsError), so it allows four times `max_connections` per node."""
    if is_cluster(settings):
        return make_cluster(settings, 4 * max_connections)  # type: ignore[return-value]
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


def make_cluster(settings: CommonSettings, max_connections: int = 64) -> RedisCluster:
    """A Redis Cluster client: the listed nodes are where it learns the cluster's layout
    (CLUSTER SLOTS); MOVED/ASK redirections refresh it (shared/resp.py)."""
    if settings.redis_key_groups == 0:
        raise ConfigError(
            "TONGDA_REDIS_KEY_GROUPS=0 (keys without hash tags) cannot run on Redis Cluster"
        )
    url = urlsplit(settings.redis_url)
    if url.path not in ("", "/", "/0"):
        raise ConfigError("TONGDA_REDIS_URL: Redis Cluster has database 0 only")
    options = redis_connection_options(settings)
    if options.pop("connection_class", None) is SSLConnection or url.scheme.startswith("rediss"):
        options["ssl"] = True
    if url.username and "username" not in options:
        options["username"] = unquote(url.username)
    if url.password and "password" not in options:
        options["password"] = unquote(url.password)
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in cluster_nodes(settings.redis_url)],
        max_connections=max_connections,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_keepalive=True,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        decode_responses=False,
        **options,
    )


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
    None also when the server does not let us ask (CONFIG disabled, as on managed Redis).
    On Redis Cluster every primary is asked; the first one amiss is named."""
    try:
        if isinstance(redis, RedisCluster):
            per_node = await redis.config_get("append*", target_nodes=RedisCluster.PRIMARIES)
            confs = [(f"Redis {node}", conf) for node, conf in sorted(per_node.items())]
        else:
            confs = [("Redis", await redis.config_get("append*"))]
    except Exception:
        return None
    for who, conf in confs:
        values = {_text(k): _text(v) for k, v in conf.items()}
        if values.get("appendonly") != "yes" or values.get("appendfsync") != "always":
            return (
                f"{who} runs with appendonly={values.get('appendonly')} "
                f"appendfsync={values.get('appendfsync')}: a crash can lose acknowledged state "
                "and the router may then produce an effect twice; run it with appendonly yes "
                "and appendfsync always (docs/operations.md)"
            )
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
