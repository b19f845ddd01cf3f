"""The consume loop's batch handling and the receipt book, on a real Redis with a fake
provider, producer and consumer: claims (dedupe), failures, dead letters, commits, receipts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from channel_support import dispatch
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from shared.channel.claims import ClaimResult
from shared.channel.outcomes import AttemptRef, OutcomePublisher
from shared.channel.provider import Accepted, Completed, Message, Provider, Receipt, SendResult
from shared.channel.receipts import ReceiptBook
from shared.channel.worker import ChannelWorker, sent_key
from shared.config import ChannelSettings
from shared.contract.codec import dumps
from shared.contract.models import Dispatch
from shared.logging import JsonFormatter
from shared.signing import Signer

pytest_plugins = ["channel_support"]

PHONE = "+8613800139999"


class FakeProducer:
    """Records what would be produced."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append((topic, key, value, headers or []))

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(v or b"null") for t, _, v, _ in self.sent if t == topic]


class FakeConsumer:
    """Serves the records given to it, honours seeks, records commits."""

    def __init__(self) -> None:
        self.committed: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.log: dict[TopicPartition, list[ConsumerRecord]] = {}
        self.position: dict[TopicPartition, int] = {}
        self.commits = asyncio.Event()

    def assignment(self) -> set[TopicPartition]:
        return set(self.log)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.position[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)
        self.commits.set()

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord]]:
        batch = {}
        left = max_records if max_records is not None else 1 << 62
        for tp, records in self.log.items():
            fresh = [r for r in records if r.offset >= self.position.get(tp, 0)][:left]
            left -= len(fresh)
            if fresh:
                batch[tp] = fresh
                self.position[tp] = fresh[-1].offset + 1
        if not batch:
            await asyncio.sleep(timeout_ms / 1000)
        return batch


class FakeProvider(Provider):
    """Answers each send with `answer(dispatch)`; counts calls and concurrency."""

    name = "fake"

    def __init__(self, answer: Callable[[Dispatch], Awaitable[SendResult]] | None = None) -> None:
        self.answer = answer or self.delivered
        self.calls: list[tuple[Dispatch, Message]] = []
        self.running = 0
        self.most_running = 0

    @staticmethod
    async def delivered(_: Dispatch) -> SendResult:
        return Completed("delivered", "pm-1")

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        self.calls.append((dispatch, message))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            return await self.answer(dispatch)
        finally:
            self.running -= 1


class Harness:
    """A worker wired to fakes, plus helpers to feed it records."""

    def __init__(self, settings: ChannelSettings, redis: Redis, provider: FakeProvider) -> None:
        self.settings = settings
        self.redis = redis
        self.provider = provider
        self.producer = FakeProducer()
        self.consumer = FakeConsumer()
        self.publisher = OutcomePublisher(settings, self.producer, provider.name)  # type: ignore[arg-type]
        self.receipts = ReceiptBook(settings, redis, self.publisher)
        self.worker = ChannelWorker(
            settings,
            provider,
            self.consumer,  # type: ignore[arg-type]
            self.producer,  # type: ignore[arg-type]
            redis,
            self.receipts,
            self.publisher,
        )
        self.tp = TopicPartition(settings.topics.dispatch(settings.channel), 0)
        self.offset = 0

    def record(self, value: bytes | Dispatch, offset: int | None = None) -> ConsumerRecord:
        raw = dumps(value) if isinstance(value, Dispatch) else value
        if offset is None:
            offset, self.offset = self.offset, self.offset + 1
        return ConsumerRecord(
            topic=self.tp.topic,
            partition=0,
            offset=offset,
            timestamp=0,
            timestamp_type=0,
            key=b"c-1",
            value=raw,
            checksum=None,
            serialized_key_size=3,
            serialized_value_size=len(raw),
            headers=[Signer.from_settings(self.settings).header(b"c-1", raw)],  # the router's
        )

    async def feed(self, *values: bytes | Dispatch) -> list[ConsumerRecord]:
        records = [self.record(v) for v in values]
        await self.worker.process({self.tp: records})
        return records

    def outcomes(self) -> list[dict[str, Any]]:
        return self.producer.values(self.settings.topics.router_inbox)


@pytest.fixture
def harness(make_settings: Callable[..., ChannelSettings], redis: Redis) -> Callable[..., Harness]:
    def make(provider: FakeProvider | None = None, **overrides: Any) -> Harness:
        return Harness(make_settings("sms", **overrides), redis, provider or FakeProvider())

    return make


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_same_attempt_twice_in_one_batch_is_sent_once(
    harness: Callable[..., Harness], redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness()
    pipelines = 0
    real_pipeline = redis.pipeline

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        nonlocal pipelines
        pipelines += 1
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(redis, "pipeline", counting_pipeline)
    d, other = dispatch("sms", PHONE), dispatch("sms", PHONE)
    before = metric("tongda_duplicate_dispatches_total", channel="sms")

    await h.feed(d, other, d, d)

    assert [c[0].notification_id for c in h.provider.calls] == [
        d.notification_id,
        other.notification_id,
    ]
    assert [o["notification_id"] for o in h.outcomes()] == [
        d.notification_id,
        other.notification_id,
    ]
    assert metric("tongda_duplicate_dispatches_total", channel="sms") - before == 2
    assert pipelines == 1  # every claim of the batch in one round trip
    assert await redis.ttl(sent_key(h.settings, d)) > 0


async def test_redelivered_batch_never_reaches_the_provider_again(
    harness: Callable[..., Harness], redis: Redis
) -> None:
    first = harness()
    d = dispatch("sms", PHONE)
    records = await first.feed(d)
    # the process crashed before committing: another one gets the same records
    second = Harness(first.settings, redis, first.provider)
    await second.worker.process({second.tp: records})
    await second.worker.commit()
    assert len(first.provider.calls) == 1
    assert first.outcomes() and not second.outcomes()
    assert second.consumer.committed == {second.tp: 1}  # skipped, but still committed


async def test_another_attempt_of_the_same_leg_is_sent(harness: Callable[..., Harness]) -> None:
    h = harness()
    d = dispatch("sms", PHONE)
    await h.feed(d, d.model_copy(update={"attempt": 2}), d.model_copy(update={"leg": 1}))
    assert len(h.provider.calls) == 3


async def test_provider_error_is_a_failed_outcome_and_the_batch_goes_on(
    harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    async def answer(d: Dispatch) -> SendResult:
        if d.recipient.endswith("0000"):
            raise ConnectionError(f"gateway refused {d.recipient}")
        return Completed("delivered", "pm-2")

    h = harness(FakeProvider(answer))
    bad, good = dispatch("sms", "+8613800130000"), dispatch("sms", PHONE)
    with caplog.at_level(logging.INFO):
        await h.feed(bad, good)
    failed, delivered = h.outcomes()
    assert (failed["outcome"], delivered["outcome"]) == ("failed", "delivered")
    assert failed["detail"] == "ConnectionError: gateway refused +86138****0000"
    assert failed["provider"] == "fake" and failed["leg"] == 0 and failed["attempt"] == 1
    lines = [JsonFormatter("tongda-sms").format(rec) for rec in caplog.records]
    assert any("+86138****0000" in line for line in lines)
    assert not any("+8613800130000" in line or PHONE in line for line in lines)


async def test_provider_hanging_past_send_timeout_is_failed(
    harness: Callable[..., Harness],
) -> None:
    async def hang(_: Dispatch) -> SendResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    h = harness(FakeProvider(hang), send_timeout_s=0.05)
    await h.feed(dispatch("sms", PHONE))
    (outcome,) = h.outcomes()
    assert outcome["outcome"] == "failed" and "0.05 s" in outcome["detail"]


async def test_sends_are_concurrent_but_bounded(harness: Callable[..., Harness]) -> None:
    async def slow(_: Dispatch) -> SendResult:
        await asyncio.sleep(0.02)
        return Completed("delivered")

    h = harness(FakeProvider(slow), max_in_flight=3)
    await h.feed(*(dispatch("sms", PHONE) for _ in range(10)))
    assert h.provider.most_running == 3
    assert len(h.outcomes()) == 10


async def test_a_batch_is_at_most_max_in_flight_so_a_kill_leaves_few_claims(
    harness: Callable[..., Harness], redis: Redis
) -> None:
    """Every dispatch of a batch is claimed before its send; a kill then leaves each claimed
    attempt of unknown outcome (reported failed by the next process). The 100,000 campaign
    on a loaded machine saw batches of thousands claimed at once, and a SIGKILL orphaned
    them all: a batch is now at most `max_in_flight` dispatches."""
    release, three_sending = asyncio.Event(), asyncio.Event()
    sending = 0

    async def stuck(_: Dispatch) -> SendResult:
        nonlocal sending
        sending += 1
        if sending == 3:
            three_sending.set()
        await release.wait()
        return Completed("delivered")

    h = harness(FakeProvider(stuck), max_in_flight=3)
    h.consumer.log[h.tp] = [h.record(dispatch("sms", PHONE), offset=i) for i in range(10)]
    loop = asyncio.create_task(h.worker.run())
    try:
        await asyncio.wait_for(three_sending.wait(), 5)
        claims = [k async for k in redis.scan_iter(match=f"{h.settings.key_prefix}sent:*")]
        assert len(claims) == 3  # not 10: the rest is still in Kafka, unclaimed
        release.set()
        while h.consumer.committed.get(h.tp) != 10:
            h.consumer.commits.clear()
            await asyncio.wait_for(h.consumer.commits.wait(), 5)
    finally:
        release.set()
        h.worker.stop_fetching()
        await asyncio.wait_for(loop, 5)
    assert h.consumer.committed == {h.tp: 10}
    assert len(h.outcomes()) == 10 and h.provider.most_running == 3


async def test_bad_records_are_dead_lettered_and_the_rest_is_sent(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    good = dispatch("sms", PHONE)
    await h.feed(
        b"{not json",
        dumps(dispatch("email", "a@example.com")),
        b'{"schema": "tongda.dispatch/v1", "notification_id": "n"}',
        good,
    )
    dead = [(v, dict(hs)) for t, _, v, hs in h.producer.sent if t == h.settings.topics.deadletter]
    assert [hs["error"] for _, hs in dead] == [
        b"malformed_json",
        b"wrong_channel",
        b"invalid_fields",
    ]
    assert dead[0][0] == b"{not json"  # the original bytes
    assert dead[0][1]["source-topic"] == h.tp.topic.encode()
    assert [c[0].notification_id for c in h.provider.calls] == [good.notification_id]


async def test_message_is_rendered_for_the_provider(harness: Callable[..., Harness]) -> None:
    h = harness()
    await h.feed(dispatch("sms", PHONE, locale="en-US", type="otp", data={"code": "123456"}))
    ((_, message),) = h.provider.calls
    assert "123456" in message.body and message.subject == "Your verification code"


async def test_commit_covers_every_partition_of_the_batch(harness: Callable[..., Harness]) -> None:
    h = harness()
    tp1 = TopicPartition(h.tp.topic, 1)
    r0 = [h.record(dispatch("sms", PHONE), offset=o) for o in (7, 8)]
    r1 = [h.record(dispatch("sms", PHONE), offset=41)]
    await h.worker.process({h.tp: r0, tp1: r1})
    assert h.consumer.committed == {}
    await h.worker.commit()
    assert h.consumer.committed == {h.tp: 9, tp1: 42}


async def test_accepted_attempt_is_reported_by_its_receipt_once(
    harness: Callable[..., Harness],
) -> None:
    async def accept(_: Dispatch) -> SendResult:
        return Accepted("pm-42")

    h = harness(FakeProvider(accept))
    await h.feed(dispatch("sms", PHONE))
    assert h.outcomes() == [] and len(h.receipts) == 1

    assert await h.receipts.resolve(Receipt("pm-42", "delivered", "DLR ok")) is True
    assert await h.receipts.resolve(Receipt("pm-42", "delivered", "DLR ok")) is False
    (outcome,) = h.outcomes()
    assert (outcome["outcome"], outcome["provider_message_id"]) == ("delivered", "pm-42")
    assert await h.receipts.wait_idle(0.1) == 0


async def test_receipt_reaching_another_replica_is_published_there(
    harness: Callable[..., Harness], redis: Redis
) -> None:
    async def accept(_: Dispatch) -> SendResult:
        return Accepted("pm-7")

    here = harness(FakeProvider(accept))
    d = dispatch("sms", PHONE)
    await here.feed(d)  # saves the pending receipt to Redis at the end of the batch
    there = Harness(here.settings, redis, FakeProvider())
    assert await there.receipts.resolve(Receipt("pm-7", "failed", "DLR undeliverable")) is True
    (outcome,) = there.outcomes()
    assert (outcome["notification_id"], outcome["outcome"]) == (d.notification_id, "failed")
    assert await redis.exists(here.receipts.key("pm-7")) == 0


async def test_receipt_arriving_before_send_returns_is_kept(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    assert await h.receipts.resolve(Receipt("pm-early", "delivered")) is False
    await h.receipts.accepted("pm-early", AttemptRef.of(dispatch("sms", PHONE)))
    (outcome,) = h.outcomes()
    assert outcome["provider_message_id"] == "pm-early"
    assert len(h.receipts) == 0


async def test_wait_idle_reports_receipts_still_pending(harness: Callable[..., Harness]) -> None:
    h = harness()
    await h.receipts.accepted("pm-late", AttemptRef.of(dispatch("sms", PHONE)))
    assert await h.receipts.wait_idle(0.05) == 1


async def test_attempts_never_reported_are_forgotten(harness: Callable[..., Harness]) -> None:
    h = harness(receipt_timeout_s=60.0)
    old = replace(AttemptRef.of(dispatch("sms", PHONE)), handed_at=time.time() - 61)
    await h.receipts.accepted("pm-lost", old)
    await h.receipts.accepted("pm-recent", AttemptRef.of(dispatch("sms", PHONE)))
    assert h.receipts.expire() == 1
    assert len(h.receipts) == 1
    assert await h.receipts.resolve(Receipt("pm-recent", "delivered")) is True
    assert await h.receipts.wait_idle(0.01) == 0


async def test_loop_retries_a_failed_batch_then_commits_it(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness()
    d = dispatch("sms", PHONE)
    h.consumer.log[h.tp] = [h.record(d)]
    real_claim = h.worker.claims.claim
    failures = [ConnectionError("redis went away")]

    async def flaky_claim(ds: list[Dispatch]) -> ClaimResult:
        if failures:
            raise failures.pop()
        return await real_claim(ds)

    monkeypatch.setattr(h.worker.claims, "claim", flaky_claim)
    loop = asyncio.create_task(h.worker.run())
    try:
        await asyncio.wait_for(h.consumer.commits.wait(), 5)
    finally:
        h.worker.stop_fetching()
        await asyncio.wait_for(loop, 2)
    assert h.consumer.committed == {h.tp: 1}
    assert h.consumer.seeks == [(h.tp, 0)]  # fetched again from the batch's first record
    assert len(h.provider.calls) == 1 and len(h.outcomes()) == 1
    assert h.worker.last_error is None
