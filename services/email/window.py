"""The bounce window: an attempt the relay accepted (SMTP 250) is `delivered` only once
`bounce_window_s` has passed without a bounce (the contract: "SMTP accepted and no bounce").

Open windows live in one Redis sorted set per service (member: the attempt's reference,
score: when its window closes), shared by the replicas and kept across restarts. Whoever
removes a member first reports its outcome: the loop here (`delivered`, when the window
closes) or the bounce intake (`bounced`), so each attempt gets exactly one of the two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

log = logging.getLogger(__name__)

POP_BATCH = 200
IDLE_POLL_S = 1.0  # windows opened by another replica are noticed this fast
RETRY_S = 1.0  # a `delivered` that could not be published is tried again this much later

# Remove and return the members whose window has closed (atomic: one replica gets each).
_POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""
# Remove one member and return its score (nil if it was not there).
_TAKE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then redis.call('ZREM', KEYS[1], ARGV[1]) end
return score
"""

Closed = Callable[[str], Awaitable[None]]  # report `delivered` for a reference; raise to retry


class BounceWindow:
    """Open windows in Redis and the loop that closes them."""

    def __init__(self, redis: Redis, key: str, window_s: float, on_closed: Closed) -> None:
        self.redis = redis
        self.key = key
        self.window_s = window_s
        self.on_closed = on_closed
        self._pop = redis.register_script(_POP_DUE)
        self._take = redis.register_script(_TAKE)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def open(self, pipe: Pipeline, ref: str) -> None:
        """Queue on `pipe` the opening of `ref`'s window, from now."""
        pipe.zadd(self.key, {ref: time.time() + self.window_s})

    async def take(self, ref: str) -> float | None:
        """Remove `ref`'s window before it closes; its closing time, or None if it was not
        open (unknown, or already closed and reported `delivered`)."""
        score = await self._take(keys=[self.key], args=[ref])
        return None if score is None else float(score)

    async def reopen(self, ref: str, closes_at: float) -> None:
        """Put back a window taken by `take()` whose bounce could not be reported."""
        await self.redis.zadd(self.key, {ref: closes_at})
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="email-bounce-window")

    async def stop(self) -> None:
        """End the loop after the windows it is closing now are reported."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=5.0)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task

    def opened(self) -> None:
        """A window was opened here: look again at when the next one closes."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                pause = await self._close_due()
            except Exception:
                log.warning("bounce window: Redis unavailable; retrying", exc_info=True)
                pause = RETRY_S
            if self._stopping:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _close_due(self) -> float:
        """Report the windows that have closed; return how long to sleep until the next."""
        due: list[bytes] = await self._pop(keys=[self.key], args=[time.time(), POP_BATCH])
        if due:
            refs = [d.decode() for d in due]
            results = await asyncio.gather(
                *(self.on_closed(r) for r in refs), return_exceptions=True
            )
            failed = {r: time.time() + RETRY_S for r, e in zip(refs, results, strict=True) if e}
            if failed:
                log.warning("%d deliveries not reported; retrying", len(failed))
                await self.redis.zadd(self.key, failed)
            if len(due) == POP_BATCH:
                return 0.0
        head = await self.redis.zrange(self.key, 0, 0, withscores=True)
        if not head:
            return IDLE_POLL_S
        return min(IDLE_POLL_S, max(0.0, float(head[0][1]) - time.time()))
