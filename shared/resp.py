"""Pipelines packed by hand: redis-py's asyncio `pack_command` costs ~20 µs per argument
in pure Python, which dominated the router's hot path. Here a command is packed with one
bytes join and a batch is written in one send; replies are read with redis-py's parser.

A connection whose batch is cancelled or fails mid-read is disconnected, never reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

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


_LENGTHS = [b"$%d\r\n" % n for n in range(1024)]


def pack_bytes(args: Sequence[bytes]) -> bytes:
    """`pack` for arguments that are all bytes already: the hot path's long commands."""
    heads = _LENGTHS
    top = len(heads)
    return b"*%d\r\n" % len(args) + b"".join(
        [(heads[len(a)] if len(a) < top else b"$%d\r\n" % len(a)) + a + b"\r\n" for a in args]
    )


async def execute(redis: Redis, commands: Sequence[bytes]) -> list[Any]:
    """Send packed commands in one write; return their replies in order.

    A reply that is an error is returned as the exception instance (like redis-py's
    `raise_on_error=False`), so one bad command does not hide the others' results.
    """
    if not commands:
        return []
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
    """

    def __init__(self, redis: Redis) -> None:
        self.pool = redis.connection_pool
        self.conn: Any = None
        self.written = 0

    async def __aenter__(self) -> Stream:
        self.conn = await self.pool.get_connection()  # type: ignore[no-untyped-call]
        return self

    async def write(self, commands: Sequence[bytes]) -> None:
        if commands:
            await self.conn.send_packed_command(b"".join(commands), check_health=False)
            self.written += len(commands)

    async def replies(self) -> list[Any]:
        out = await read_replies(self.conn, self.written)
        self.written = 0
        return out

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is not None or self.written:
                await self.conn.disconnect()
        finally:
            await self.pool.release(self.conn)
