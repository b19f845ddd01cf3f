"""Kafka clients configured one way for every service, and the dead-letter helper.

Producers use acks=all without idempotence (tongda makes its sends idempotent itself, see
docs/architecture.md); consumers never auto-commit: offsets are committed after the state a
batch produced is durable.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Collection, Iterable, Sequence
from functools import lru_cache
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord, TopicPartition

from shared.config import CommonSettings
from shared.errors import InvalidEvent
from shared.health import GroupWatch
from shared.metrics import DEADLETTERS, OFFSET_GAPS
from shared.security import kafka_client_options

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Batch: TypeAlias = dict[TopicPartition, list[Record]]

# A dead letter the broker refuses although it fits our producer (its topic has a smaller
# max.message.bytes than ours) is sent again cut to this size.
DEADLETTER_FALLBACK_BYTES = 64 * 1024
MAX_DEADLETTER_KEY_BYTES = 4096


_leave_on_close = [True]  # set by configure_group_leave(); read when a consumer closes


def configure_group_leave(settings: CommonSettings) -> None:
    """Whether consumers of this process (ours and faust's, all aiokafka) send LeaveGroup
    when they close (`kafka_leave_group_on_close`). aiokafka has no option for it, so the
    coordinator's leave step is wrapped once; it still leaves when its poll loop is stuck
    (not closing), where Kafka expects it to."""
    _leave_on_close[0] = settings.kafka_leave_group_on_close
    original = GroupCoordinator._maybe_leave_group
    if getattr(original, "__tongda__", False):
        return

    async def maybe_leave_group(self: GroupCoordinator) -> None:
        if self._closing.done() and not _leave_on_close[0]:
            log.info(
                "consumer of group %s closes without LeaveGroup; its partitions move when "
                "its session times out",
                self.group_id,
            )
            return
        await original(self)

    maybe_leave_group.__tongda__ = True  # type: ignore[attr-defined]
    GroupCoordinator._maybe_leave_group = maybe_leave_group


class GroupListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells a `GroupWatch` when a rebalance starts and when it completes, around an
    optional inner listener (which sees every call as if it were the only one)."""

    def __init__(
        self,
        watch: GroupWatch,
        inner: ConsumerRebalanceListener | None = None,
        gaps: GapGuard | None = None,
    ) -> None:
        self.watch = watch
        self.inner = inner
        self.gaps = gaps  # told that the partitions assigned start where they were committed

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.watch.revoked()
        if self.inner is not None:
            await self.inner.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.gaps is not None:
            self.gaps.forget(assigned)
        if self.inner is not None:
            await self.inner.on_partitions_assigned(assigned)
        self.watch.assigned()


class FetchWait:
    """Adapts a consumer's `fetch.max.wait.ms` to a broker that answers fetches empty while
    records wait.

    A broker may hold an empty fetch for up to the wait (Tansu 0.6 does, hence tongda's short
    default, `kafka_fetch_max_wait_ms`), and Tansu also answers *empty* when reading the
    records takes longer than the wait, as it does once its in-memory log is large: with
    10 ms, a backlog of 50,000 records was never read again (docs/reliability.md, "Fetches
    answered empty"). After every fetch the loop calls `after_fetch(records, waiting)`: an
    empty answer while `waiting` > 0, from the `patience`-th in a row on, doubles the wait (up
    to `max_ms`); fetched records bring it back towards the configured value. One empty
    answer with records counted as waiting is normal on Tansu (its high-water mark counts a
    produce before its records can be read, "Offsets a fetch skipped" in docs/reliability.md)
    and raising the wait for it cost the router's p99 at 2,000 events/s 150 ms (make bench);
    the starvation this is for answers every fetch empty. On a broker that returns what it
    has at once (Apache Kafka) this never triggers. aiokafka reads the wait from its fetcher
    for every request; that attribute is private, so a client without it is left as it is.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, base_ms: int, max_ms: int = 2_000, patience: int = 3
    ) -> None:
        self.consumer = consumer
        self.base_ms = base_ms
        self.max_ms = max(base_ms, max_ms)
        self.patience = patience
        self.current_ms = base_ms
        self.raised = 0  # how many times it was raised (for tests and logs)
        self.peak_ms = base_ms
        self._empty = 0  # empty answers in a row while records waited

    def _set(self, wait_ms: int) -> None:
        fetcher = getattr(self.consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = wait_ms
        self.current_ms = wait_ms

    def after_fetch(self, records: int, waiting: int | None) -> None:
        self._empty = self._empty + 1 if records == 0 and waiting else 0
        if self._empty >= self.patience and self.current_ms < self.max_ms:
            wait_ms = min(self.max_ms, self.current_ms * 2)
            self.raised += 1
            if wait_ms > self.peak_ms:  # each new height once, not every oscillation
                self.peak_ms = wait_ms
                log.warning(
                    "the broker answered a fetch with no records while %d wait; fetch wait "
                    "raised from %d to %d ms",
                    waiting,
                    self.current_ms,
                    wait_ms,
                )
            self._set(wait_ms)
        elif records and self.current_ms > self.base_ms:
            self._set(max(self.base_ms, self.current_ms // 2))


class GapGuard:
    """Holds a partition back at an offset a fetch skipped, on topics where every offset holds
    a record, and reads it again.

    Tansu 0.6 (in memory) reserves a produce's offsets by raising the partition's high-water
    mark *before* it writes the records; a fetch that lists the partition in between, while
    another producer's later records are already written, returns those and the consumer's
    position moves past the earlier, acknowledged record for good (docs/reliability.md,
    "Offsets a fetch skipped": 6 holes in 16,000 records from 8 producers). On tongda's own
    topics (the router inbox, the dispatch topics, the status and audit topics), written
    only by non-transactional producers and never compacted, every offset holds a record, so
    a jump means exactly that: `check()` cuts the partition's records at the hole, seeks back
    to it and lets the next fetch read it. A hole still there after `wait_s` is logged as an
    error, counted, and left behind, so nothing stalls for good. On Apache Kafka this never
    triggers: its high-water mark moves only after the append.

    The first records after an assignment are taken as they come unless `expect()` said
    where they start; an offset below the one expected (a seek back) is taken too.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Collection[str],
        service: str,
        wait_s: float = 10.0,
    ) -> None:
        self.consumer = consumer
        self.topics = frozenset(topics)
        self.service = service
        self.wait_s = wait_s
        self.refetched = 0  # holes read again (tests and logs)
        self.skipped = 0  # holes left behind after wait_s
        self._next: dict[TopicPartition, int] = {}
        self._holes: dict[TopicPartition, tuple[int, float]] = {}  # offset, first seen
        for topic in self.topics:  # exported at 0, so rates and alerts have a series
            for outcome in ("refetched", "skipped"):
                OFFSET_GAPS.labels(service=service, topic=topic, outcome=outcome)

    def expect(self, tp: TopicPartition, offset: int) -> None:
        """The next record of `tp` is at `offset` (the caller sought there)."""
        self._next[tp] = offset

    def forget(self, tps: Iterable[TopicPartition] | None = None) -> None:
        """Where `tps` (default: every partition) start next is not known any more."""
        for tp in list(self._next) if tps is None else tps:
            self._next.pop(tp, None)
            self._holes.pop(tp, None)

    async def check(self, batch: Batch) -> Batch:
        """`batch` without the records behind a hole; if that leaves nothing while a hole is
        held, waits a moment first, so a loop calling it does not spin."""
        out: Batch = {}
        held = False
        for tp, records in batch.items():
            if tp.topic not in self.topics:
                out[tp] = records
                continue
            kept = self._check(tp, records)
            if kept is not records:
                held = True
            if kept:
                out[tp] = kept
        if held and not out:
            await asyncio.sleep(0.005)
        return out

    def _check(self, tp: TopicPartition, records: list[Record]) -> list[Record]:
        expected = self._next.get(tp)
        for i, record in enumerate(records):
            if expected is not None and record.offset > expected:
                return self._hole(tp, records, i, expected)
            expected = record.offset + 1
        self._holes.pop(tp, None)
        if expected is not None:
            self._next[tp] = expected
        return records

    def _hole(self, tp: TopicPartition, records: list[Record], i: int, at: int) -> list[Record]:
        now = time.monotonic()
        seen = self._holes.get(tp)
        if seen is None or seen[0] != at:
            seen = self._holes[tp] = (at, now)
            self.refetched += 1
            OFFSET_GAPS.labels(service=self.service, topic=tp.topic, outcome="refetched").inc()
            log.warning(
                "the broker skipped offsets %d-%d of %s-%d; reading them again",
                at,
                records[i].offset - 1,
                tp.topic,
                tp.partition,
            )
        if now - seen[1] >= self.wait_s:
            self.skipped += 1
            OFFSET_GAPS.labels(service=self.service, topic=tp.topic, outcome="skipped").inc()
            log.error(
                "offsets %d-%d of %s-%d are still missing after %.0f s; going on without them",
                at,
                records[i].offset - 1,
                tp.topic,
                tp.partition,
                self.wait_s,
            )
            self._holes.pop(tp, None)
            self._next[tp] = records[-1].offset + 1
            return records
        self._next[tp] = at
        if tp in self.consumer.assignment():  # else it has moved: its next owner reads it
            self.consumer.seek(tp, at)
        return records[:i]


def make_producer(settings: CommonSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        **kafka_client_options(settings),
        client_id=client_id,
        acks="all",
        enable_idempotence=False,
        linger_ms=2,
        max_batch_size=256 * 1024,
        max_request_size=settings.kafka_max_request_bytes,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        retry_backoff_ms=200,
    )


def make_consumer(
    settings: CommonSettings, group_id: str, topics: Sequence[str], client_id: str
) -> AIOKafkaConsumer:
    configure_group_leave(settings)
    return AIOKafkaConsumer(
        *topics,
        **kafka_client_options(settings),
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        max_poll_records=settings.kafka_max_poll_records,
        max_partition_fetch_bytes=settings.kafka_max_request_bytes,
        fetch_max_bytes=4 * settings.kafka_max_request_bytes,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.kafka_session_timeout_ms // 4),
        rebalance_timeout_ms=settings.kafka_session_timeout_ms,
        retry_backoff_ms=200,
    )


def deadletter_headers(msg: ConsumerRecord[bytes, bytes], error: InvalidEvent) -> Headers:
    return [
        *[(k, v) for k, v in (msg.headers or ()) if k not in ("error", "error-detail")],
        ("error", error.code.encode()),
        ("error-detail", error.detail[:4000].encode()),
        ("source-topic", msg.topic.encode()),
        ("source-partition", str(msg.partition).encode()),
        ("source-offset", str(msg.offset).encode()),
    ]


async def send_deadletter(
    producer: AIOKafkaProducer,
    settings: CommonSettings,
    msg: ConsumerRecord[bytes, bytes],
    error: InvalidEvent,
    service: str,
) -> None:
    """Send the original bytes with the reason; awaited, so it is durable before a commit.

    A value too big to be dead-lettered whole (over the producer's `kafka_max_request_bytes`
    with its headers, or refused by the broker for its topic's limit) is dead-lettered as a
    truncated copy with headers `truncated: true` and `original-size`, beside `source-topic`,
    `source-partition` and `source-offset`: never an endless retry.
    """
    DEADLETTERS.labels(service=service, error=error.code).inc()
    log.warning(
        "dead-lettered %s[%d]@%d: %s",
        msg.topic,
        msg.partition,
        msg.offset,
        error.code,
        extra={"error_detail": error.detail[:500]},
    )
    headers = deadletter_headers(msg, error)
    key, value = msg.key, msg.value
    if record_size(key, value, headers) > settings.kafka_max_request_bytes:
        key, value, headers = truncated(msg, headers, settings.kafka_max_request_bytes)
    try:
        await producer.send_and_wait(
            settings.topics.deadletter, value=value, key=key, headers=headers
        )
    except (MessageSizeTooLargeError, RecordListTooLargeError):
        if value is None or len(value) <= DEADLETTER_FALLBACK_BYTES:
            raise
        key, value, headers = truncated(
            msg, deadletter_headers(msg, error), DEADLETTER_FALLBACK_BYTES
        )
        await producer.send_and_wait(
            settings.topics.deadletter, value=value, key=key, headers=headers
        )


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """The bytes a record takes in a batch, as the producer counts them for its limit."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    return size


def truncated(
    msg: ConsumerRecord[bytes, bytes], headers: Headers, limit: int
) -> tuple[bytes | None, bytes | None, Headers]:
    """(key, value, headers) of a copy of `msg` that fits in `limit` bytes, saying so."""
    value = msg.value or b""
    key = msg.key
    headers = [
        *headers,
        ("truncated", b"true"),
        ("original-size", str(len(value)).encode()),
    ]
    if key is not None and len(key) > MAX_DEADLETTER_KEY_BYTES:
        headers.append(("original-key-size", str(len(key)).encode()))
        key = key[:MAX_DEADLETTER_KEY_BYTES]
    room = limit - record_size(key, b"", headers) - 64  # varint growth of the value's length
    log.warning(
        "dead letter of %s[%d]@%d cut from %d to %d bytes",
        msg.topic,
        msg.partition,
        msg.offset,
        len(value),
        max(0, room),
    )
    return key, value[: max(0, room)], headers


@lru_cache(maxsize=65_536)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition (index) the default partitioner (murmur2, as Kafka's Java clients) picks
    for `key` among `partitions`; cached, as the same customers' keys come back."""
    return (_murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = [struct.Struct(f"<{n}I") for n in range(64)]  # n little-endian 32-bit words


def _murmur2(data: bytes) -> int:
    """aiokafka's `murmur2` (Kafka's Utils.murmur2), reading the key four bytes at a time:
    about 3× faster in pure Python, and every new customer's key is hashed once
    (tests/test_router_hotpath.py checks it against aiokafka's partitioner)."""
    length = len(data)
    h = 0x9747B28C ^ length
    n = length >> 2
    words = _WORDS[n] if n < len(_WORDS) else struct.Struct(f"<{n}I")
    for k in words.unpack_from(data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra:
        at = length & ~3
        if extra >= 3:
            h ^= data[at + 2] << 16
        if extra >= 2:
            h ^= data[at + 1] << 8
        h = ((h ^ data[at]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)
