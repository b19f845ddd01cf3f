"""Offsets a fetch skipped (shared.kafka.GapGuard): Tansu 0.6 raises a partition's high-water
mark before it writes a produce's records, so a consumer can be handed a later producer's
records first and move past an acknowledged one for good. This is how one attempt outcome of
the 100,000-notification fault campaign never reached the router (docs/reliability.md,
"Offsets a fetch skipped"). On tongda's own topics every offset holds a record, so a jump is
read again."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.kafka import Batch, GapGuard

# --- the guard's rules, on batches written out ---------------------------------------------


@dataclass
class Rec:
    offset: int


@dataclass
class Seeking:
    """What GapGuard uses of a consumer: its assignment and seek (recorded)."""

    assigned: set[TopicPartition]
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


TP = TopicPartition("inbox", 0)
OTHER = TopicPartition("profiles", 0)


def batch(tp: TopicPartition, *offsets: int) -> Batch:
    return {tp: [Rec(o) for o in offsets]}  # type: ignore[misc]


def offsets(b: Batch, tp: TopicPartition = TP) -> list[int]:
    return [r.offset for r in b.get(tp, [])]


async def test_records_behind_a_hole_are_held_back_and_the_partition_sought_to_it() -> None:
    consumer = Seeking({TP, OTHER})
    guard = GapGuard(consumer, ["inbox"], "test")  # type: ignore[arg-type]
    assert offsets(await guard.check(batch(TP, 10, 11, 12))) == [10, 11, 12]
    # 13 not written yet when the broker handed out 14 and 15
    assert offsets(await guard.check(batch(TP, 14, 15))) == []
    assert consumer.seeks == [(TP, 13)]
    # within one batch too: the records before the hole go on
    assert offsets(await guard.check(batch(TP, 13, 14, 16))) == [13, 14]
    assert consumer.seeks[-1] == (TP, 15)
    assert offsets(await guard.check(batch(TP, 15, 16, 17))) == [15, 16, 17]
    assert guard.refetched == 2 and guard.skipped == 0


async def test_other_topics_and_seeks_back_pass_as_they_are() -> None:
    consumer = Seeking({TP, OTHER})
    guard = GapGuard(consumer, ["inbox"], "test")  # type: ignore[arg-type]
    # a compacted topic has gaps of its own
    assert offsets(await guard.check(batch(OTHER, 1, 5, 9)), OTHER) == [1, 5, 9]
    await guard.check(batch(TP, 20, 21))
    # a seek back (a batch fetched again) starts below what was expected
    assert offsets(await guard.check(batch(TP, 18, 19, 20))) == [18, 19, 20]
    assert consumer.seeks == []


async def test_after_an_assignment_the_first_records_are_taken_where_they_start() -> None:
    consumer = Seeking({TP})
    guard = GapGuard(consumer, ["inbox"], "test")  # type: ignore[arg-type]
    await guard.check(batch(TP, 1, 2))
    guard.forget([TP])  # reassigned: it starts at its committed offset, wherever that is
    assert offsets(await guard.check(batch(TP, 40, 41))) == [40, 41]
    guard.expect(TP, 50)  # sought there
    assert offsets(await guard.check(batch(TP, 52))) == []
    assert consumer.seeks == [(TP, 50)]


async def test_a_hole_still_there_after_the_wait_is_left_behind_so_nothing_stalls() -> None:
    consumer = Seeking({TP})
    guard = GapGuard(consumer, ["inbox"], "test", wait_s=0.05)  # type: ignore[arg-type]
    await guard.check(batch(TP, 1))
    started = time.monotonic()
    while not (got := offsets(await guard.check(batch(TP, 3, 4)))):
        assert time.monotonic() - started < 5, "held back for good"
    assert got == [3, 4]
    assert guard.skipped == 1
    assert offsets(await guard.check(batch(TP, 5))) == [5]  # and the partition goes on


async def test_a_partition_that_moved_away_is_not_sought() -> None:
    consumer = Seeking(set())
    guard = GapGuard(consumer, ["inbox"], "test")  # type: ignore[arg-type]
    guard.expect(TP, 7)
    assert offsets(await guard.check(batch(TP, 9))) == []
    assert consumer.seeks == []


# --- the defect and the guard through the real broker --------------------------------------

PRODUCERS = 8
ROUND_RECORDS = 4_000  # per topic: Tansu lists a partition's records on every fetch
ROUNDS = 10  # fresh topics until the guard has met a hole


async def new_topic(broker: str, name: str, partitions: int) -> str:
    """A topic of its own (`name-<random>`) with `partitions` partitions."""
    topic = f"{name}-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    return topic


async def guarded_round(broker: str) -> tuple[GapGuard, list[int], list[int]]:
    """Eight producers write one new partition while a guarded consumer reads it live, until
    the guard meets a hole or ROUND_RECORDS are written; returns the guard, the offsets
    acknowledged and the offsets the consumer was handed."""
    topic = await new_topic(broker, "gaps", 1)
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    consumer.assign([tp])
    guard = GapGuard(consumer, [topic], "test")
    seen: list[int] = []
    acked: list[int] = []
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set() or len(seen) < len(acked):
            b = await guard.check(await consumer.getmany(timeout_ms=50))
            seen.extend(r.offset for r in b.get(tp, []))

    async def produce(i: int) -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=0, acks="all")
        await p.start()
        try:
            while not guard.refetched and len(acked) < ROUND_RECORDS:
                acked.append((await p.send_and_wait(topic, f"{i}".encode())).offset)
        finally:
            await p.stop()

    reading = asyncio.create_task(read())
    try:
        await asyncio.gather(*(produce(i) for i in range(PRODUCERS)))
        done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reading), 60)
    finally:
        done.set()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        await consumer.stop()
    return guard, acked, seen


async def test_a_guarded_consumer_reads_every_acknowledged_record_although_the_broker_skips(
    broker: str,
) -> None:
    """The broker hands a live consumer a later record before an earlier one every few
    thousand records with eight producers on a partition (its defect); a guarded consumer
    still reads every acknowledged offset once, in order."""
    written = 0
    for _ in range(ROUNDS):
        guard, acked, seen = await guarded_round(broker)
        written += len(acked)
        assert seen == sorted(acked) == list(range(len(acked)))
        assert guard.skipped == 0
        if guard.refetched:
            return
    raise AssertionError(
        f"the broker skipped no offset in {written} records: the guard was not exercised"
    )


# --- the end of a partition, on either broker ----------------------------------------------


async def test_high_watermarks_count_every_record_of_a_batched_produce(broker: str) -> None:
    """tools.demo.high_watermarks (what `make demo` and `make chaos` wait on before they
    publish requests) gives the offset after the last record. ListOffsets gives it on Kafka;
    Tansu 0.6.0 answers one past the first offset of the last batch, which the test shows too,
    so that the helper is seen to read past it."""
    from tools.demo import high_watermarks

    topic = await new_topic(broker, "hwm", 2)
    producer = AIOKafkaProducer(bootstrap_servers=broker, linger_ms=50)
    await producer.start()
    try:
        for _ in range(3):  # three single-record batches on partition 0
            await producer.send_and_wait(topic, b"one", partition=0)
        for _ in range(100):  # then one batch of 100 (linger)
            await producer.send(topic, b"many", partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    reader = AIOKafkaConsumer(bootstrap_servers=broker, group_id=None)
    await reader.start()
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]
        listed = await reader.end_offsets(tps)
        marks = await high_watermarks(reader, tps)
    finally:
        await reader.stop()
    assert marks == {tps[0]: 103, tps[1]: 0}
    assert listed[tps[1]] == 0 and listed[tps[0]] in (4, 103)  # Tansu 0.6.0: 4; Kafka: 103


async def test_wait_committed_returns_only_once_the_group_has_committed_every_end(
    broker: str,
) -> None:
    """tools.demo.end_offsets and wait_committed (what `make bench` waits on before it reads
    a round's dispatches, and `make demo` before it publishes requests): an empty partition
    is not waited on; a group behind on one partition keeps the wait going until it
    commits there too."""
    from tools.demo import end_offsets, wait_committed

    topic = await new_topic(broker, "committed", 3)
    producer = AIOKafkaProducer(bootstrap_servers=broker)
    await producer.start()
    try:
        for p, count in ((0, 5), (1, 2)):  # partition 2 stays empty
            for _ in range(count):
                await producer.send(topic, b"x", partition=p)
        await producer.flush()
    finally:
        await producer.stop()
    ends = await end_offsets(broker, topic)
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    assert ends == {p0: 5, p1: 2}

    group = f"committed-{uuid.uuid4().hex[:8]}"
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, group_id=group)
    await consumer.start()
    try:
        consumer.assign([p0, p1])
        await consumer.commit({p0: 5, p1: 1})  # one record of partition 1 not yet
        try:
            await wait_committed(broker, group, ends, 0.3, poll_s=0.05)
        except TimeoutError as exc:
            assert topic in str(exc) and group in str(exc)
        else:
            raise AssertionError("a group behind its end on one partition must be waited on")
        await consumer.commit({p1: 2})
        await wait_committed(broker, group, ends, 10, poll_s=0.05)
    finally:
        await consumer.stop()
