"""The consume loop: fetch dispatches, claim each attempt once, hand it to the provider, commit.

A batch's offsets are committed only after every send in it has been handed over (accepted,
or immediately failed with its outcome published). Each attempt is claimed in Redis before
the provider sees it, so a batch fetched again after a crash or a rebalance never reaches
the provider twice; an attempt whose claiming process died before recording the provider's
answer is reported `failed` when its dispatch comes again (shared/channel/claims.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from jinja2 import TemplateError
from redis.asyncio import Redis

from shared.channel.claims import Claims, Liveness, dispatch_claim_key, log_fields
from shared.channel.outcomes import AttemptRef, OutcomePublisher
from shared.channel.provider import Accepted, Completed, Provider, SendResult
from shared.channel.receipts import ReceiptBook
from shared.config import ChannelSettings
from shared.contract.codec import decode
from shared.contract.models import Dispatch
from shared.errors import InvalidEvent
from shared.health import LagMeter, RateLimitedLog, Watchdog
from shared.kafka import Batch, FetchWait, GapGuard, Record, send_deadletter
from shared.metrics import (
    BATCH_SECONDS,
    BATCH_SIZE,
    DISPATCH_SECONDS,
    DUPLICATE_DISPATCHES,
    EVENTS_CONSUMED,
    PROVIDER_SENDS,
)
from shared.signing import Signer
from shared.templates import render

log = logging.getLogger(__name__)


FETCH_TIMEOUT_MS = 200  # how long one fetch waits; also how fast a stop is noticed
EXPIRE_EVERY_S = 10.0  # how often attempts never reported are looked for
UNREPORTED_MAX = 10_000  # immediate outcomes kept for a batch fetched again


def sent_key(settings: ChannelSettings, dispatch: Dispatch) -> str:
    """The Redis key claiming one attempt: set once, before the provider sees it."""
    return dispatch_claim_key(settings, dispatch)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class ChannelWorker:
    """Consumes one channel's dispatch topic and hands each attempt to the provider once."""

    def __init__(
        self,
        settings: ChannelSettings,
        provider: Provider,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        redis: Redis,
        receipts: ReceiptBook,
        publisher: OutcomePublisher,
        claims: Claims | None = None,
        gaps: GapGuard | None = None,
    ) -> None:
        self.settings = settings
        self.claims = claims or Claims(settings, redis, Liveness(settings, redis))
        self.signer = Signer.from_settings(settings)
        self.provider = provider
        self.consumer = consumer
        self.producer = producer
        self.redis = redis
        self.receipts = receipts
        self.publisher = publisher
        self.channel = settings.channel
        self.service = f"tongda-{settings.channel}"
        self.topic = settings.topics.dispatch(settings.channel)
        # every offset of the dispatch topic holds a record: one a fetch skipped is read again
        self.gaps = gaps or GapGuard(
            consumer, [self.topic], self.service, settings.kafka_offset_gap_wait_s
        )
        self.lag = LagMeter(self.service, consumer)  # tongda_consumer_lag_records
        self.watchdog = Watchdog(self.service, settings.stall_after_s, self.lag.update, logger=log)
        self.fetch_wait = FetchWait(consumer, settings.kafka_fetch_max_wait_ms)
        self._send_slots = asyncio.Semaphore(settings.max_in_flight)
        self._stopping = asyncio.Event()
        self._uncommitted: dict[TopicPartition, int] = {}
        self._next_expiry = 0.0
        # Immediate outcomes whose publishing failed, by claim key: published when the batch
        # comes again (the claim names this process, so nothing else reports them).
        self._unreported: dict[str, tuple[AttemptRef, Completed]] = {}
        self._errors = RateLimitedLog(log)

    @property
    def last_error(self) -> str | None:
        """The last failure of the loop, None once an iteration completed after it."""
        return self.watchdog.last_error

    def stop_fetching(self) -> None:
        """Take no new batch; the batch in hand is still handed over and committed."""
        self._stopping.set()

    async def run(self) -> None:
        """Fetch, hand over and commit batches until `stop_fetching()` is called.

        The watchdog hears of each batch fetched and done (and each empty fetch); a failure
        is logged at a bounded rate and retried after a growing backoff.
        """
        while not self._stopping.is_set():
            batch: Batch = {}
            try:
                # at most max_in_flight: every dispatch of a batch is claimed before its send,
                # so a kill mid-batch leaves at most that many attempts of unknown outcome
                batch = await self.consumer.getmany(
                    timeout_ms=FETCH_TIMEOUT_MS, max_records=self.settings.max_in_flight
                )
                waiting = await self.lag.update()  # after every fetch: the gauge moves too
                self.fetch_wait.after_fetch(sum(len(rs) for rs in batch.values()), waiting)
                batch = await self.gaps.check(batch)
                self._expire_receipts()
                if self._stopping.is_set():
                    continue  # a batch fetched after the stop stays uncommitted: refetched
                if not batch:
                    self.watchdog.nothing_fetched(waiting)
                    continue
                self.watchdog.batch_started(sum(len(rs) for rs in batch.values()))
                try:
                    await self.process(batch)
                except Exception:
                    self._rewind(batch)  # its sends already handed over are skipped as claimed
                    if not set(batch) & self.consumer.assignment():
                        self.watchdog.released()  # none of it comes back to us
                    raise
                self.watchdog.released()  # handed over: only its commit may still fail
                await self.commit()
                self.watchdog.batch_done()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._backoff(self.watchdog.failed(exc))

    async def process(self, batch: Batch) -> None:
        """Decode, claim and hand over one batch; raise if an outcome could not be published."""
        started = time.perf_counter()
        records = [r for rs in batch.values() for r in rs]
        EVENTS_CONSUMED.labels(service=self.service, topic=self.topic).inc(len(records))
        BATCH_SIZE.labels(service=self.service).observe(len(records))
        dispatches = [d for d in [await self._decode(r) for r in records] if d is not None]
        claimed = await self.claims.claim(dispatches)
        DUPLICATE_DISPATCHES.labels(channel=self.channel).inc(len(claimed.mine) + len(claimed.done))
        for d in [*claimed.fresh, *(d for d, _ in claimed.orphans)]:
            self._unreported.pop(sent_key(self.settings, d), None)
        late = [
            self._report(d, *self._unreported[k])
            for d in claimed.mine
            if (k := sent_key(self.settings, d)) in self._unreported
        ]
        orphans = [self._report(d, AttemptRef.of(d), result) for d, result in claimed.orphans]
        results = await asyncio.gather(
            *(self.hand_over(d) for d in claimed.fresh),
            *late,
            *orphans,
            return_exceptions=True,
        )
        try:
            await self.receipts.save()  # those a failed save left in memory
        except Exception as exc:  # receipts still match in memory; only other replicas miss them
            self._errors.log(
                logging.WARNING, type(exc).__name__, "pending receipts not saved to Redis: %r", exc
            )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        for tp, rs in batch.items():
            self._uncommitted[tp] = rs[-1].offset + 1
        BATCH_SECONDS.labels(service=self.service).observe(time.perf_counter() - started)

    async def commit(self) -> None:
        """Commit the offsets of the batches handed over and not yet committed."""
        if self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            try:
                await self.consumer.commit(offsets)
            except BaseException:  # retried with the next commit, for partitions still ours
                assigned = self.consumer.assignment()
                kept = {tp: o for tp, o in offsets.items() if tp in assigned}
                self._uncommitted = {**kept, **self._uncommitted}
                raise

    async def claim(self, dispatches: list[Dispatch]) -> list[Dispatch]:
        """Claim every attempt; return those claimed now (to be sent)."""
        return (await self.claims.claim(dispatches)).fresh

    async def hand_over(self, dispatch: Dispatch) -> None:
        """Send one attempt; remember it for its receipt or publish its immediate outcome."""
        DISPATCH_SECONDS.labels(channel=self.channel).observe(
            max(0.0, (datetime.now(UTC) - _aware(dispatch.dispatched_at)).total_seconds())
        )
        async with self._send_slots:
            ref = AttemptRef.of(dispatch)
            result = await self._send(dispatch)
        if isinstance(result, Accepted):
            await self.receipts.accepted(result.provider_message_id, ref)
        else:
            await self._report(dispatch, ref, result)

    async def _report(self, dispatch: Dispatch, ref: AttemptRef, result: Completed) -> None:
        """Publish an immediate outcome, then record the claim as sent. If publishing fails,
        the outcome is kept for when the batch comes again (it is rewound)."""
        key = sent_key(self.settings, dispatch)
        try:
            await self.claims.answered(dispatch, result)
        except Exception as exc:  # the outcome still goes out; only a crash now would matter
            self._errors.log(
                logging.WARNING,
                f"answered {type(exc).__name__}",
                "provider's answer not recorded in the claim: %r",
                exc,
            )
        try:
            await self.publisher.publish(
                ref,
                result.outcome,
                result.provider_message_id,
                result.detail,
                provider=result.provider,
            )
        except BaseException:
            self._unreported[key] = (ref, result)
            while len(self._unreported) > UNREPORTED_MAX:  # batches that never came back
                del self._unreported[next(iter(self._unreported))]
            raise
        self._unreported.pop(key, None)
        try:
            await self.claims.sent(dispatch)
        except Exception as exc:  # the outcome is out; only a crash now would matter
            self._errors.log(
                logging.WARNING,
                f"sent {type(exc).__name__}",
                "outcome published; its claim was not marked sent: %r",
                exc,
            )

    async def _send(self, dispatch: Dispatch) -> SendResult:
        template = dispatch.template or dispatch.type
        try:
            message = render(
                template, dispatch.locale, dispatch.data, dispatch.channel, dispatch.category
            )
        except TemplateError as exc:  # a missing variable, a value that cannot be formatted
            log.warning("template %s failed: %s", template, exc, extra=log_fields(dispatch))
            return Completed("failed", detail=f"template error: {exc}")
        except Exception as exc:
            log.warning("template %s failed", template, extra=log_fields(dispatch), exc_info=True)
            return Completed("failed", detail=f"template error: {type(exc).__name__}: {exc}")
        PROVIDER_SENDS.labels(channel=self.channel, provider=self.provider.name).inc()
        timeout = self.settings.send_timeout_s
        try:
            return await asyncio.wait_for(self.provider.send(dispatch, message), timeout)
        except TimeoutError:
            log.warning("provider send timed out", extra=log_fields(dispatch))
            return Completed("failed", detail=f"provider did not answer within {timeout:g} s")
        except Exception as exc:
            log.warning("provider send failed", extra=log_fields(dispatch), exc_info=True)
            return Completed("failed", detail=f"{type(exc).__name__}: {exc}")

    async def _decode(self, record: Record) -> Dispatch | None:
        try:
            self.signer.verify(record)  # only the router may say what to send to whom
            dispatch = decode(record.value, Dispatch)
            if dispatch.channel != self.channel:
                raise InvalidEvent(
                    "wrong_channel",
                    f"a {dispatch.channel} dispatch on the {self.channel} service's topic",
                )
        except InvalidEvent as exc:
            await send_deadletter(self.producer, self.settings, record, exc, self.service)
            return None
        return dispatch

    def _expire_receipts(self) -> None:
        now = time.monotonic()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY_S
            self.receipts.expire()

    def _rewind(self, batch: Batch) -> None:
        """Fetch the batch again (the partitions still ours), from its first record."""
        assigned = self.consumer.assignment()
        for tp, rs in batch.items():
            if tp in assigned:
                self.consumer.seek(tp, rs[0].offset)
                self.gaps.expect(tp, rs[0].offset)

    async def _backoff(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

