"""The time every tongda service reads: the real clock, or a simulated one for demos.

A simulated clock shows `clock_start` (a simulated instant) until the real instant `origin`,
then runs `1 / time_scale` times faster than real time: with `time_scale=0.001`, a 15-minute
call-back comes due after 0.9 real seconds and a deferral from 22:30 to 08:00 after 34 real
seconds. The origin is either configured (`clock_origin_epoch_s`) or set in Redis by whoever
starts the stack once every service is ready (`CLOCK_ORIGIN_KEY`, read by the router at start
and on every scheduler tick), so start-up time does not eat simulated hours. Every process of
a stack gets the same settings, so they share one clock. By default it is the real clock.

Scheduled times are stored in simulated epoch seconds; the scheduler compares them with
`Clock.epoch_s()`. Real networks do not speed up, so step timeouts are kept at least
`min_real_timeout_s` long in real time (`Clock.at_least_real`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from redis.asyncio import Redis

CLOCK_ORIGIN_KEY = "clock:origin"  # after the key prefix: the real epoch seconds of the origin


@dataclass
class Clock:
    time_scale: float = 1.0  # real seconds per simulated second
    start: datetime | None = None  # the simulated instant at `origin_epoch_s`
    origin_epoch_s: float = 0.0  # real epoch seconds at which `start` was; 0: not yet (frozen)

    @classmethod
    def real(cls) -> Clock:
        return cls()

    @property
    def simulated(self) -> bool:
        return self.start is not None or self.time_scale != 1.0

    def epoch_s(self) -> float:
        """Now, in (simulated) epoch seconds."""
        real = time.time()
        if not self.simulated:
            return real
        if self.start is None:  # only faster: simulated time begins at the origin
            origin = self.origin_epoch_s or real
            return origin + (real - origin) / self.time_scale
        if not self.origin_epoch_s or real < self.origin_epoch_s:
            return self.start.timestamp()  # frozen until the stack is ready
        return self.start.timestamp() + (real - self.origin_epoch_s) / self.time_scale

    def now(self) -> datetime:
        """Now, timezone-aware (UTC)."""
        return datetime.fromtimestamp(self.epoch_s(), UTC)

    async def sync(self, redis: Redis, prefix: str) -> None:
        """Take the origin from Redis when it was not configured (a simulated clock only)."""
        if self.simulated and self.start is not None:
            raw = await redis.get(f"{prefix}{CLOCK_ORIGIN_KEY}")
            if raw is not None:
                self.origin_epoch_s = float(raw)

    def real_seconds(self, simulated_s: float) -> float:
        """How long `simulated_s` simulated seconds take in real time."""
        return simulated_s * self.time_scale

    def at_least_real(self, simulated_s: float, min_real_s: float) -> float:
        """`simulated_s`, raised so that it lasts at least `min_real_s` real seconds."""
        return max(simulated_s, min_real_s / self.time_scale)
