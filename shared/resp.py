"""Pipelines packed by hand: redis-py's asyncio `pack_command` costs ~20 µs per argument
in pure Python, which dominated the router's hot path. Here a command is packed with one
bytes join and a batch is written in one send; replies are read with redis-py's parser.

A connection whose batch is cancelled or fails mid-read is disconnected, never reused.

On Redis Cluster (`redis.asyncio.RedisCluster`) each command goes to the primary of the hash
slot of its first key (a Lua call's first KEYS entry): the commands of a batch are sent per
node, the nodes concurrently, so a command must not name keys of two slots (MGET, DEL, Lua:
callers group keys by customer group, services/router/store.py). A reply that redirects
(MOVED, ASK: a slot being moved by a resharding) or refuses for now (TRYAGAIN, CLUSTERDOWN)
means the command did not run: it is sent again through redis-py, which follows the
redirection and refreshes its slot table; while a slot's keys are split between two nodes
(TRYAGAIN, for a command naming several keys) it waits, up to `REDIRECT_PATIENCE_S`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

_REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)

try:  # hiredis' reader, when redis-py uses it: replies already received are taken from it
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover (redis-py without hiredis support)
    NOT_ENOUGH_DATA, _AsyncHiredisParser = object(), None  # type: ignore[assignment,misc]

Arg = bytes | str | int | float


def pack(*args: Arg) -> bytes:
    """One command in RESP: `*<n>` then `$<len>` and the bytes of each argument."""
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        cls = arg.__class__
        data: bytes = (
            arg if cls is bytes else arg.encode() if cls is str else repr(arg).encode()  # type: ignore[assignment,union-attr]
        )
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(parts)


_LENGTHS = [b"$%d" % n for n in range(1024)]


def pack_bytes(args: Sequence[bytes]) -> bytes:
    """`pack` for arguments that are all bytes already: the hot path's long commands.

    Each argument's length line and its bytes become two parts of one `\\r\\n`-join, so no
    argument is copied before the join: about a third of the time per argument of joining
    `$<len>\\r\\n` + argument + `\\r\\n` made first."""
    heads = _LENGTHS
    top = len(heads)
    parts = [b"*%d" % len(args)]
    extend = parts.extend
    for a in args:
        n = len(a)
        extend((heads[n] if n < top else b"$%d" % n, a))
    parts.append(b"")
    return b"\r\n".join(parts)


def unpack(command: bytes) -> list[bytes]:
    """The arguments of a command packed by `pack` (or `pack_bytes`)."""
    assert command[:1] == b"*", "not a packed command"
    end = command.index(b"\r\n")
    n, at, args = int(command[1:end]), end + 2, []
    for _ in range(n):
        end = command.index(b"\r\n", at)
        size = int(command[at + 1 : end])
        args.append(command[end + 2 : end + 2 + size])
        at = end + 4 + size
    return args


def routing_key(args: Sequence[bytes]) -> bytes:
    """The key a cluster routes a command by: a Lua call's first KEYS entry, else the first
    argument after the command name."""
    if args[0].upper() in (b"EVALSHA", b"EVAL"):
        if int(args[2]) < 1:
            raise ValueError("a Lua call on Redis Cluster must name at least one key")
        return args[3]
    return args[1]


def command_slot(command: bytes) -> int:
    """The hash slot a packed command runs in (of its routing key)."""
    return key_slot(routing_key(unpack(command)))


async def execute(redis: Redis | RedisCluster, commands: Sequence[bytes]) -> list[Any]:
    """Send packed commands in one write; return their replies in order.

    A reply that is an error is returned as the exception instance (like redis-py's
    `raise_on_error=False`), so one bad command does not hide the others' results.
    On Redis Cluster: one write per node, the nodes concurrently (see the module docstring).
    """
    if not commands:
        return []
    if isinstance(redis, RedisCluster):
        return await _execute_cluster(redis, commands)
    pool = redis.connection_pool
    conn = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await conn.send_packed_command(b"".join(commands), check_health=True)
        return await read_replies(conn, len(commands))
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


async def _execute_cluster(redis: RedisCluster, commands: Sequence[bytes]) -> list[Any]:
    await redis.initialize()  # once: the slot table (a no-op when done)
    by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
    manager = redis.nodes_manager
    for i, command in enumerate(commands):
        node = manager.get_node_from_slot(command_slot(command))
        by_node.setdefault(node.name, (node, []))[1].append(i)
    replies: list[Any] = [None] * len(commands)

    async def on_node(node: ClusterNode, indices: list[int]) -> None:
        conn = node.acquire_connection()
        try:
            await node.disconnect_if_needed(conn)  # marked by a topology refresh: reconnect
            await conn.send_packed_command(b"".join(commands[i] for i in indices))
            for i in indices:
                try:
                    replies[i] = await conn.read_response(disable_decoding=True)
                except ResponseError as exc:
                    replies[i] = exc
        except BaseException:
            await conn.disconnect()
            raise
        finally:
            node.release(conn)

    try:
        await asyncio.gather(*(on_node(node, indices) for node, indices in by_node.values()))
    except (RedisConnectionError, RedisTimeoutError, OSError):
        # a node gone (a failover?): learn the cluster's layout again before the caller retries
        try:
            await manager.initialize()
        except Exception:
            pass
        raise
    for i, reply in enumerate(replies):  # in order: a slot's commands stay in order
        if isinstance(reply, _REDIRECTED):  # the command did not run: again, via redis-py
            replies[i] = await _again(redis, commands[i])
    return replies


REDIRECT_PATIENCE_S = 10.0  # how long a command waits for a slot being migrated


async def _again(redis: RedisCluster, command: bytes) -> Any:
    """Send a redirected command through redis-py (which follows MOVED and ASK, and retries
    TRYAGAIN a few times); while the slot stays split between two nodes (TRYAGAIN: its keys
    are being migrated) or the cluster is down, try again with a backoff for up to
    REDIRECT_PATIENCE_S, then raise. An error reply is returned, as by `execute`."""
    args = unpack(command)
    name = args[0].decode()
    deadline = time.monotonic() + REDIRECT_PATIENCE_S
    delay = 0.05
    while True:
        try:
            return await redis.execute_command(name, *args[1:])
        except (TryAgainError, ClusterDownError, ClusterError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        except ResponseError as exc:
            return exc


async def read_replies(conn: Any, n: int) -> list[Any]:
    """The next `n` replies on `conn`, undecoded; an error reply as its exception instance.

    redis-py's `read_response` costs several µs a reply (a timeout context, checks) even when
    the reply is already in its parser's buffer, and a batch's reads are thousands of small
    replies (a profile, a hash, a ledger each). Replies already buffered are taken straight
    from hiredis' reader; `read_response` (with its timeout) reads the socket when the buffer
    runs dry. A RESP3 push message met on the way is handled as `read_response` handles it.
    """
    out: list[Any] = []
    parser = conn._parser
    # (private attributes of redis-py's hiredis parser: without them, the slow path only)
    fast = (
        _AsyncHiredisParser is not None
        and isinstance(parser, _AsyncHiredisParser)
        and hasattr(parser, "_reader")
        and hasattr(parser, "_connected")
    )
    push = getattr(parser, "_hiredis_PushNotificationType", None) if fast else None
    while len(out) < n:
        if fast and parser._connected:
            reply = parser._reader.gets(False)
            if push is not None and isinstance(reply, push):
                await parser.handle_push_response(reply)
                continue
            if reply is not NOT_ENOUGH_DATA:
                if isinstance(reply, RedisConnectionError) or (
                    isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError)
                ):
                    await conn.disconnect(nowait=True)
                    raise reply if isinstance(reply, RedisConnectionError) else reply[0]
                out.append(reply)  # an error reply is a ResponseError instance already
                continue
        try:
            out.append(await conn.read_response(disable_decoding=True))
        except ResponseError as exc:
            out.append(exc)
    return out


class Stream:
    """Write commands on one connection as they are ready, read every reply at the end.

    Redis, a separate process, runs the first commands while the caller is still computing
    the next ones. Replies come back in write order; on any error or cancellation the
    connection is disconnected rather than returned to the pool half-read.

    On Redis Cluster the commands are kept and sent by `replies` (`execute`: per node).
    """

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis = redis
        self.cluster: list[bytes] | None = [] if isinstance(redis, RedisCluster) else None
        self.pool: Any = None if isinstance(redis, RedisCluster) else redis.connection_pool
        self.conn: Any = None
        self.written = 0

    async def __aenter__(self) -> Stream:
        if self.cluster is None:
            self.conn = await self.pool.get_connection()
        return self

    async def write(self, commands: Sequence[bytes]) -> None:
        if self.cluster is not None:
            self.cluster += commands
            return
        if commands:
            await self.conn.send_packed_command(b"".join(commands), check_health=False)
            self.written += len(commands)

    async def replies(self) -> list[Any]:
        if self.cluster is not None:
            kept, self.cluster = self.cluster, []
            return await execute(self.redis, kept)
        out = await read_replies(self.conn, self.written)
        self.written = 0
        return out

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.cluster is not None:
            return
        try:
            if exc_type is not None or self.written:
                await self.conn.disconnect()
        finally:
            await self.pool.release(self.conn)
