"""Readiness that tells the truth about a consume loop, and logging a repeated failure calmly.

* `Watchdog`: the loop calls `batch_started(n)` when it fetched n records, `batch_done()`
  after the batch is handled and committed, `nothing_fetched()` after an empty fetch, and
  `failed(exc)` when a batch fails; `failed` logs at a
  bounded rate and returns how long to back off. `check()` is a readiness check: it reports
  the loop stalled when nothing completed for `stall_after_s` while records wait (a batch in
  hand not done, or consumer lag > 0), and keeps `tongda_consume_loop_stalled{service}` up to
  date.
* `RateLimitedLog`: the same message at most once per `every_s` seconds, the next one saying
  how many were suppressed in between.
* `consumer_lag(consumer)`: records waiting on the consumer's assigned partitions
  (high-water mark minus position); `lag_by_topic(consumer)` the same per topic.
* `GroupWatch`: a consumer whose group membership never completes (joined, no assignment
  for `stuck_after_s`) makes `/readyz` 503 and `tongda_consumer_group_stuck` 1.
* `LagMeter`: keeps `tongda_consumer_lag_records{service, topic}` up to date; a consume loop
  calls `update()` after every fetch (a batch or an empty one), so the gauge moves while idle.

See docs/reliability.md ("Readiness").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka.errors import IllegalStateError

from shared.masking import scrub
from shared.metrics import CONSUMER_LAG, GROUP_STUCK, LOOP_STALLED

log = logging.getLogger(__name__)

Clock = Callable[[], float]
LagProbe = Callable[[], Awaitable[int | None]]  # records waiting; None when unknown

BACKOFF_S: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0)
LOG_EVERY_S = 5.0


@dataclass
class _Seen:
    last_logged: float
    suppressed: int = 0


class RateLimitedLog:
    """Log each distinct message at most once per `every_s` s, counting what was suppressed.

    The key is the message text (e.g. the exception's type and text), so a different error is
    logged at once while the same one repeating is summarised.
    """

    def __init__(
        self, logger: logging.Logger, every_s: float = LOG_EVERY_S, clock: Clock = time.monotonic
    ) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def log(
        self,
        level: int,
        key: str,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log `msg % args` unless `key` was logged less than `every_s` ago; True if logged.

        A logged repeat carries `suppressed` (how many were dropped since the last one) in
        the message and in the record's extra fields; a traceback only on the first.
        """
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.last_logged < self.every_s:
            seen.suppressed += 1
            return False
        if len(self._seen) > 256:  # bounded: forget keys not seen for a while
            self._seen = {
                k: v for k, v in self._seen.items() if now - v.last_logged < 10 * self.every_s
            }
        suppressed = seen.suppressed if seen else 0
        if seen is not None and suppressed:
            msg += " (repeated; %d more suppressed in the last %.0f s)"
            args = (*args, suppressed, now - seen.last_logged)
        elif seen is not None:
            msg += " (repeated after %.0f s)"
            args = (*args, now - seen.last_logged)
        self.logger.log(
            level,
            msg,
            *args,
            exc_info=exc_info if seen is None else None,
            extra={"suppressed": suppressed},
        )
        self._seen[key] = _Seen(last_logged=now)
        return True

    def forget(self) -> None:
        """Start afresh (after a recovery): the next failure is logged at once."""
        self._seen.clear()


class LagSource(Protocol):
    """What lag needs of a consumer: aiokafka's AIOKafkaConsumer, or faust's app.consumer."""

    def assignment(self) -> Set[Any]: ...

    def highwater(self, tp: Any) -> int | None: ...

    async def position(self, tp: Any) -> int | None: ...


async def lag_by_topic(consumer: LagSource, timeout_s: float = 0.5) -> dict[str, int] | None:
    """{topic: records waiting past the consumer's position, summed over its assigned
    partitions}, or None when that is unknown (no high-water mark yet, or a position being
    reset by a rebalance). One timeout for all the partitions' positions."""
    tps = sorted(consumer.assignment())
    highs = [consumer.highwater(tp) for tp in tps]
    if any(h is None for h in highs):
        return None
    try:
        async with asyncio.timeout(timeout_s):  # no task of its own: this runs every fetch
            positions = [await consumer.position(tp) for tp in tps]
    except (TimeoutError, IllegalStateError):  # not ours any more, or no position yet
        return None
    out: dict[str, int] = {}
    for tp, high, position in zip(tps, highs, positions, strict=True):
        if position is None:
            return None
        out[tp.topic] = out.get(tp.topic, 0) + max(0, int(high or 0) - position)
    return out


async def consumer_lag(consumer: LagSource, timeout_s: float = 0.5) -> int | None:
    """Records waiting on the assigned partitions past the consumer's position, or None when
    that is unknown (no high-water mark yet, or a position being reset by a rebalance)."""
    by_topic = await lag_by_topic(consumer, timeout_s)
    return None if by_topic is None else sum(by_topic.values())


class LagMeter:
    """`tongda_consumer_lag_records{service, topic}` of one consumer (no partition label: the
    sum over the partitions assigned here). A topic no longer assigned here reads 0; while the
    lag is unknown (before the first fetch, during a rebalance) the gauges keep their value.
    `topics`: the topics to report (None: every assigned one)."""

    def __init__(
        self, service: str, consumer: LagSource, topics: Iterable[str] | None = None
    ) -> None:
        self.service = service
        self.consumer = consumer
        self.topics = None if topics is None else frozenset(topics)
        self._gauges: dict[str, Any] = {}  # topic → its gauge child (labels() costs a lock)

    async def update(self) -> int | None:
        """Measure and publish; return the total lag (None when unknown). Never raises: a
        metric must not stop a consume loop."""
        try:
            by_topic = await lag_by_topic(self.consumer)
        except Exception as exc:  # e.g. a consumer being stopped
            log.debug("consumer lag not measured: %r", exc)
            return None
        if by_topic is None:
            return None
        if self.topics is not None:
            by_topic = {t: n for t, n in by_topic.items() if t in self.topics}
        for topic, gauge in self._gauges.items():
            if topic not in by_topic:
                gauge.set(0)
        for topic, n in by_topic.items():
            gauge = self._gauges.get(topic)
            if gauge is None:
                gauge = self._gauges[topic] = CONSUMER_LAG.labels(service=self.service, topic=topic)
            gauge.set(n)
        return sum(by_topic.values())


class Watchdog:
    """Tracks one consume loop's progress; see the module docstring."""

    def __init__(
        self,
        service: str,
        stall_after_s: float,
        lag: LagProbe | None = None,
        *,
        logger: logging.Logger | None = None,
        backoff_s: Sequence[float] = BACKOFF_S,
        log_every_s: float = LOG_EVERY_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.service = service
        self.stall_after_s = stall_after_s
        self.lag = lag
        self.backoff_s = tuple(backoff_s)
        self.clock = clock
        self.failures = 0  # consecutive
        self.in_hand = 0  # records fetched and not yet done (a failed batch is fetched again)
        self.last_error: str | None = None
        self.last_done = clock()
        self.log = RateLimitedLog(logger or log, log_every_s, clock)
        LOOP_STALLED.labels(service=service).set(0)

    def batch_started(self, records: int) -> None:
        """The loop fetched `records` records and works on them."""
        self.in_hand = records

    def batch_done(self) -> None:
        """A batch was handled and committed."""
        if self.failures:
            self.log.logger.info(
                "consume loop recovered after %d failed attempts",
                self.failures,
                extra={"service": self.service},
            )
            self.log.forget()
        self.last_done = self.clock()
        self.failures = 0
        self.in_hand = 0
        self.last_error = None

    def released(self) -> None:
        """The failed batch in hand will not be fetched again here (its partitions went to
        another consumer): nothing of it waits for this loop any more."""
        self.in_hand = 0

    def nothing_fetched(self, waiting: int | None = None) -> None:
        """An empty fetch: progress, unless a failed batch still waits to be fetched again (a
        fetch right after a rewind can come back empty) or records wait on the assigned
        partitions (`waiting`, the lag measured after the fetch): a broker that answers every
        fetch empty while records wait is a stall, not idleness."""
        if not self.in_hand and not waiting:
            self.last_done = self.clock()

    def failed(self, exc: BaseException) -> float:
        """Record a failed iteration, log it (rate-limited); return the seconds to back off."""
        self.last_error = scrub(f"{type(exc).__name__}: {exc}")  # shown by /readyz too
        delay = self.backoff_s[min(self.failures, len(self.backoff_s) - 1)]
        self.failures += 1
        if self.in_hand and self.idle_s() >= self.stall_after_s:  # its records wait
            LOOP_STALLED.labels(service=self.service).set(1)
        self.log.log(
            logging.ERROR,
            self.last_error,
            "batch failed (%d in a row); retrying in %.1f s: %s",
            self.failures,
            delay,
            self.last_error,
            exc_info=exc,
        )
        return delay

    def idle_s(self) -> float:
        """Seconds since the loop last completed an iteration."""
        return self.clock() - self.last_done

    async def stalled(self) -> str | None:
        """The reason the loop counts as stalled, or None; updates the metric."""
        reason = None
        idle = self.idle_s()
        if idle >= self.stall_after_s:
            behind = await self.lag() if self.lag is not None else None
            waiting = self.in_hand + (behind or 0)
            if waiting:
                reason = f"no batch completed for {idle:.0f} s with {waiting} records waiting"
            if reason and self.last_error:
                reason += f"; last error: {self.last_error}"
        LOOP_STALLED.labels(service=self.service).set(1 if reason else 0)
        return reason

    def check(self) -> Callable[[], Awaitable[str | None]]:
        """A readiness check (shared.http.ReadinessCheck) reporting a stall."""
        return self.stalled


class GroupWatch:
    """Whether a consumer's group membership completes.

    A consumer joins its group at start and again at every rebalance; until the group
    coordinator hands it an assignment (even an empty one) it consumes nothing, and neither
    the loop's `Watchdog` nor the lag can tell (no partitions, no lag). The consumer's
    rebalance listener calls `revoked()` when a rebalance starts and `assigned()` when it
    completes; `check()` (a readiness check) reports the group stuck when no assignment came
    for `stuck_after_s` since the start or the last revocation, logs it at a bounded rate and
    keeps `tongda_consumer_group_stuck{service, group}` up to date. Seen on Tansu 0.6: a
    leader's LeaveGroup during a rebalance left the group waiting for the gone leader for
    good (docs/reliability.md, "The router start that hung").
    """

    def __init__(
        self,
        service: str,
        group: str,
        stuck_after_s: float,
        *,
        logger: logging.Logger | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.service = service
        self.group = group
        self.stuck_after_s = stuck_after_s
        self.clock = clock
        self.since = clock()  # joining (or rebalancing) since
        self.assigned_at: float | None = None
        self.rebalances = 0
        self.log = RateLimitedLog(logger or log, LOG_EVERY_S * 6, clock)
        GROUP_STUCK.labels(service=service, group=group).set(0)

    def joining(self) -> None:
        """The consumer starts (and joins its group) now."""
        self.since = self.clock()
        self.assigned_at = None

    def revoked(self) -> None:
        """A rebalance started: the consumer must join again."""
        if self.assigned_at is not None:
            self.since = self.clock()
        self.assigned_at = None

    def assigned(self) -> None:
        """The rebalance completed (an empty assignment counts)."""
        if self.assigned_at is None:
            self.rebalances += 1
        self.assigned_at = self.clock()
        GROUP_STUCK.labels(service=self.service, group=self.group).set(0)

    def waiting_s(self) -> float:
        """Seconds the consumer has waited for an assignment (0 when it has one)."""
        return 0.0 if self.assigned_at is not None else self.clock() - self.since

    async def stuck(self) -> str | None:
        """The reason the membership counts as stuck, or None; updates the metric."""
        waiting = self.waiting_s()
        reason = None
        if waiting >= self.stuck_after_s:
            reason = (
                f"consumer group {self.group}: no partitions assigned for {waiting:.0f} s "
                "(a rebalance that does not complete; check the broker's group coordinator)"
            )
            self.log.log(logging.ERROR, f"group {self.group} stuck", "%s", reason)
        GROUP_STUCK.labels(service=self.service, group=self.group).set(1 if reason else 0)
        return reason

    def check(self) -> Callable[[], Awaitable[str | None]]:
        """A readiness check (shared.http.ReadinessCheck) reporting a stuck membership."""
        return self.stuck
