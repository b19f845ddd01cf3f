"""The time every tongda service reads: the real clock, or a simulated one for demos.

A simulated clock starts at `clock_start` (a simulated instant) at the real instant
`clock_origin_epoch_s`, and runs `1 / time_scale` times faster than real time: with
`time_scale=0.001`, a 15-minute call-back comes due after 0.9 real seconds and a deferral from
22:30 to 08:00 after 34 real seconds. Every process of a stack is given the same three settings,
so they share one clock. With the defaults (time_scale 1, no start) it is the real clock.

Scheduled times are stored in simulated epoch seconds; the scheduler compares them with
`Clock.epoch_s()`. Real networks do not speed up, so step timeouts are kept at least
`min_real_timeout_s` long in real time (`Clock.at_least_real`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Clock:
    time_scale: float = 1.0  # real seconds per simulated second
    start: datetime | None = None  # the simulated instant at `origin_epoch_s`
    origin_epoch_s: float = 0.0  # the real epoch seconds at which `start` was

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
        origin = self.origin_epoch_s or real
        base = self.start.timestamp() if self.start is not None else origin
        return base + (real - origin) / self.time_scale

    def now(self) -> datetime:
        """Now, timezone-aware (UTC)."""
        return datetime.fromtimestamp(self.epoch_s(), UTC)

    def real_seconds(self, simulated_s: float) -> float:
        """How long `simulated_s` simulated seconds take in real time."""
        return simulated_s * self.time_scale

    def at_least_real(self, simulated_s: float, min_real_s: float) -> float:
        """`simulated_s`, raised so that it lasts at least `min_real_s` real seconds."""
        return max(simulated_s, min_real_s / self.time_scale)
