"""Exactly-once output without Kafka transactions: a Redis outbox per input partition.

The broker tongda must run on (and Apache Kafka without transactions) cannot make "write
state, produce records, commit offset" atomic. So a transition writes its output records
into the outbox of the input partition it came from, in the same Lua call as the state: the
outbox of an input partition is one hash per customer group (store.py `Keys.outbox`), in the
group's hash slot like the state. A record's Kafka key is its customer id, which tells the
group.
After the broker acknowledges them they are removed, and the highest acknowledged offset of
each output partition is remembered (`outpos`). When a partition is assigned (after a crash
or rebalance) its leftover outbox entries are checked against the output partitions from
`outpos` on: entries whose `tongda-effect` header is found there were sent, the rest are
sent now. No record is lost and none is sent twice, whatever instant the router dies at.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata, TopicPartition
from redis.asyncio import Redis

from services.router.store import Keys
from shared.config import CommonSettings
from shared.kafka import GapGuard, key_partition
from shared.redis import RedisMeter
from shared.resp import execute, pack
from shared.security import kafka_client_options
from shared.signing import Signer, internal_topics

log = logging.getLogger(__name__)

EFFECT_HEADER = "tongda-effect"


class OutRecord(msgspec.Struct, frozen=True, gc=False):
    """One record to produce, with its effect id (a msgspec Struct: thousands per batch)."""

    effect_id: str
    topic: str
    key: bytes
    value: bytes

    def pack(self) -> bytes:
        t, k = self.topic.encode(), self.key
        return b"%d:%d:%b%b%b" % (len(t), len(k), t, k, self.value)  # one copy of the value

    @classmethod
    def unpack(cls, effect_id: str, blob: bytes) -> OutRecord:
        lt, lk, rest = blob.split(b":", 2)
        n, m = int(lt), int(lk)
        return cls(effect_id, rest[:n].decode(), rest[n : n + m], rest[n + m :])


class Written(msgspec.Struct, frozen=True, gc=False):
    """Where the broker put a record (one per record produced: a Struct, not a dataclass)."""

    topic: str
    partition: int
    offset: int


class Outbox:
    """Produces a batch's records and clears them; recovers an assigned partition's leftovers."""

    def __init__(
        self,
        redis: Redis,
        producer: AIOKafkaProducer,
        keys: Keys,
        settings: CommonSettings,
        output_topics: Sequence[str],
        meter: RedisMeter | None = None,
    ) -> None:
        self.redis = redis
        self.meter = meter or RedisMeter("tongda-router")
        self.producer = producer
        self.keys = keys
        self.settings = settings
        self.output_topics = list(output_topics)
        self._partitions: dict[str, list[int]] = {}
        self.signer = Signer.from_settings(settings)  # dispatches are signed (shared/signing.py)
        self._signed = internal_topics(settings.topics)
        self._sending: asyncio.Task[None] | None = None  # the last records being sent
        self._clearing: asyncio.Task[None] | None = None  # the last batch's clean-up
        # per output partition: the offset after the last record acknowledged here (where a
        # record not acknowledged yet can have landed at the earliest)
        self._acked_end: dict[TopicPartition, int] = {}

    async def send(self, records: Sequence[tuple[TopicPartition, OutRecord]]) -> None:
        """Produce records and wait until the broker acknowledged them all (`start_send`)."""
        await self.start_send(records)
        await self.sent()

    async def start_send(
        self, records: Sequence[tuple[TopicPartition, OutRecord]]
    ) -> asyncio.Task[None]:
        """Start producing records (each noted in the outbox of its input partition) once the
        records of the previous call are acknowledged, so records leave in the order they were
        produced. Returns the task that ends when these are acknowledged: the caller commits
        its input offsets after it (the router processes its next batch meanwhile)."""
        await self.sent()
        task = asyncio.create_task(self._send(list(records)))
        self._sending = task
        return task

    @property
    def in_flight(self) -> asyncio.Task[None] | None:
        """The task sending the records of the last `start_send`, until `sent` is awaited."""
        return self._sending

    def failed(self) -> bool:
        """Whether the last records' sending ended in an error (`sent` raises it)."""
        task = self._sending
        return (
            task is not None
            and task.done()
            and not task.cancelled()
            and (task.exception() is not None)
        )

    async def sent(self, raise_errors: bool = True) -> None:
        """Wait until the records of the last `start_send` are acknowledged."""
        task, self._sending = self._sending, None
        await _finished(task, raise_errors, "sending the outbox")

    async def flush(self) -> None:
        """Wait for everything in flight: records being sent, then their clean-up."""
        await self.sent(raise_errors=False)
        await self.settled(raise_errors=False)

    async def _send(self, pending: list[tuple[TopicPartition, OutRecord]]) -> None:
        """Produce until every record is acknowledged; then clear them from the outbox (in
        the background: `settled` waits for it).

        Records go out as one producer batch per output partition (the default partitioner's
        choice, murmur2 of the key, as Kafka's Java clients do); a batch that is not
        acknowledged is sent again, alone, until it is.
        """
        await self.settled()
        delay_s = 0.2
        acked: list[tuple[tuple[TopicPartition, OutRecord], Written]] = []
        found: list[tuple[TopicPartition, OutRecord]] = []  # not acknowledged, yet on the broker
        while pending:
            results = await self._produce_batched([r for _, r in pending])
            acked += [
                (p, res)
                for p, res in zip(pending, results, strict=True)
                if isinstance(res, Written)
            ]
            failed = [
                (p, e) for p, e in zip(pending, results, strict=True) if not isinstance(e, Written)
            ]
            pending = [p for p, _ in failed]
            if failed:
                log.warning(
                    "%d records not acknowledged (%s); retrying in %.1f s",
                    len(failed),
                    failed[0][1],
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
                # Not acknowledged is not "not written": a request that timed out (a paused
                # or slow broker) may have been appended. Only what the broker lacks is sent
                # again; what it has is cleared like an acknowledged record.
                landed = await self._on_broker([r for _, r in pending])
                if landed:
                    log.warning(
                        "%d of them are on the broker already; not sent again", len(landed)
                    )
                    found += [p for p in pending if p[1].effect_id in landed]
                    pending = [p for p in pending if p[1].effect_id not in landed]
        if acked or found:
            # Clearing the acknowledged records from the outbox waits for nobody: it runs
            # while the next batch is processed (its records are on the broker; were the
            # router to stop first, recovery would find them there and not send them again).
            clear = self._clear([p for p, _ in acked] + found, [w for _, w in acked])
            self._clearing = asyncio.create_task(clear)

    async def settled(self, raise_errors: bool = True) -> None:
        """Wait until the outbox entries of the last acknowledged records are cleared."""
        task, self._clearing = self._clearing, None
        await _finished(task, raise_errors, "the outbox clean-up")

    async def _partition(self, topic: str, key: bytes) -> int:
        parts = self._partitions.get(topic)
        if parts is None:
            parts = sorted(await self.producer.partitions_for(topic))
            self._partitions[topic] = parts
        return parts[key_partition(key, len(parts))]

    async def _produce_batched(self, records: Sequence[OutRecord]) -> list[Written | BaseException]:
        by_tp: dict[tuple[str, int], list[int]] = {}
        known = self._partitions
        for i, r in enumerate(records):
            parts = known.get(r.topic)
            partition = (
                parts[key_partition(r.key, len(parts))]
                if parts
                else await self._partition(r.topic, r.key)
            )
            by_tp.setdefault((r.topic, partition), []).append(i)
        futures: list[tuple[asyncio.Future[RecordMetadata], list[int]]] = []
        for (topic, partition), indices in by_tp.items():
            batch, members = self.producer.create_batch(), list[int]()
            for i in indices:
                r = records[i]
                headers = [(EFFECT_HEADER, r.effect_id.encode())]
                if r.topic in self._signed:
                    headers.append(self.signer.header(r.key, r.value))
                if batch.append(key=r.key, value=r.value, timestamp=None, headers=headers) is None:
                    futures.append(
                        (await self.producer.send_batch(batch, topic, partition=partition), members)
                    )
                    batch, members = self.producer.create_batch(), list[int]()
                    batch.append(key=r.key, value=r.value, timestamp=None, headers=headers)
                members.append(i)
            futures.append(
                (await self.producer.send_batch(batch, topic, partition=partition), members)
            )
        acks = await asyncio.gather(*(f for f, _ in futures), return_exceptions=True)
        results: list[Written | BaseException] = [RuntimeError("not sent")] * len(records)
        for (_, members), ack in zip(futures, acks, strict=True):
            for k, i in enumerate(members):
                results[i] = (
                    ack
                    if isinstance(ack, BaseException)
                    else Written(ack.topic, ack.partition, ack.offset + k)
                )
        return results

    async def _clear(
        self, records: Sequence[tuple[TopicPartition, OutRecord]], written: Sequence[Written]
    ) -> None:
        ends: dict[tuple[str, int], int] = {}
        for w in written:
            tp_out = (w.topic, w.partition)
            ends[tp_out] = max(ends.get(tp_out, -1), w.offset + 1)
        top = {f"{topic}:{partition}": end for (topic, partition), end in ends.items()}
        for (topic, partition), end in ends.items():
            out = TopicPartition(topic, partition)
            self._acked_end[out] = max(self._acked_end.get(out, 0), end)
        by_box: dict[str, list[str]] = {}
        inputs: set[TopicPartition] = set()
        for tp, r in records:
            box = self.keys.outbox(tp.topic, tp.partition, r.key.decode())
            by_box.setdefault(box, []).append(r.effect_id)
            inputs.add(tp)
        commands = [pack("HDEL", box, *ids) for box, ids in by_box.items()]
        positions = [x for field, offset in top.items() for x in (field, offset)]
        for tp in inputs:
            commands.append(pack("HSET", self.keys.outpos(tp.topic, tp.partition), *positions))
        await self.meter.timed("outbox", execute(self.redis, commands))

    async def _output_partitions(self, reader: AIOKafkaConsumer) -> list[TopicPartition]:
        tps = []
        for topic in self.output_topics:
            parts = reader.partitions_for_topic(topic)
            if parts is None:
                await reader._client.force_metadata_update()
                parts = reader.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        return tps

    def _reader(self) -> AIOKafkaConsumer:
        """A group-less consumer that reads output partitions for `tongda-effect` headers."""
        return AIOKafkaConsumer(
            **kafka_client_options(self.settings),
            client_id=f"{self.settings.kafka_client_id}-outbox-recovery",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=self.settings.kafka_max_request_bytes,
            request_timeout_ms=self.settings.kafka_request_timeout_ms,
        )

    async def _on_broker(self, records: Sequence[OutRecord]) -> set[str]:
        """The effect ids of `records` that are on the broker: each record's output partition
        is read from the end of what was acknowledged here (its start when nothing was) to its
        end now. Raises if the broker does not answer (the batch is then retried with
        recovery, which checks the same)."""
        outs = {TopicPartition(r.topic, await self._partition(r.topic, r.key)) for r in records}
        reader = self._reader()
        await reader.start()
        try:
            ends: dict[TopicPartition, int] = await reader.end_offsets(list(outs))
            starts = {tp: self._acked_end.get(tp, 0) for tp in outs}
            return await self._scan(reader, starts, ends, {r.effect_id for r in records})
        finally:
            await reader.stop()

    async def recover(self, inputs: Iterable[TopicPartition]) -> int:
        """Before consuming `inputs`: resend what their outbox holds and the broker lacks."""
        await self.flush()  # what this process still had in flight goes first
        inputs = list(inputs)
        if not inputs:
            return 0
        reader = self._reader()
        await reader.start()
        try:
            out_tps = await self._output_partitions(reader)
            ends: dict[TopicPartition, int] = await reader.end_offsets(out_tps)
            for out, end in ends.items():  # what this process sends from now on lands after
                self._acked_end[out] = max(self._acked_end.get(out, 0), end)
            resent = 0
            for tp in inputs:
                resent += await self._recover_one(reader, tp, out_tps, ends)
            return resent
        finally:
            await reader.stop()

    async def _recover_one(
        self,
        reader: AIOKafkaConsumer,
        tp: TopicPartition,
        out_tps: list[TopicPartition],
        ends: dict[TopicPartition, int],
    ) -> int:
        pos_key = self.keys.outpos(tp.topic, tp.partition)
        # the partition's outbox: one hash per customer group, read in one round trip
        boxes = [self.keys.group_outbox(tp.topic, tp.partition, g) for g in self.keys.all_groups()]
        replies = await execute(self.redis, [pack("HGETALL", k) for k in [pos_key, *boxes]])
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        raw_pos, *raw_boxes = (_hash(r) for r in replies)
        box_of = {eid: box for box, raw in zip(boxes, raw_boxes, strict=True) for eid in raw}
        pending_raw = {eid: blob for raw in raw_boxes for eid, blob in raw.items()}
        positions = {k.decode(): int(v) for k, v in raw_pos.items()}
        baseline = {
            f"{o.topic}:{o.partition}": ends[o]
            for o in out_tps
            if f"{o.topic}:{o.partition}" not in positions
        }
        if not pending_raw:
            if baseline:  # first owner ever: everything from now on is ours to check
                pipe = self.redis.pipeline(transaction=False)
                for field, offset in baseline.items():
                    pipe.hsetnx(pos_key, field, offset)
                await pipe.execute()
            return 0
        pending = {k.decode(): OutRecord.unpack(k.decode(), v) for k, v in pending_raw.items()}
        starts = {o: positions.get(f"{o.topic}:{o.partition}", 0) for o in out_tps}
        found = await self._scan(reader, starts, ends, set(pending))
        missing = [r for eid, r in pending.items() if eid not in found]
        log.warning(
            "outbox recovery of %s[%d]: %d pending, %d already on the broker, %d resent",
            tp.topic,
            tp.partition,
            len(pending),
            len(found),
            len(missing),
        )
        await self.send([(tp, r) for r in missing])
        done: dict[str, list[bytes]] = {}
        for eid, box in box_of.items():
            done.setdefault(box, []).append(eid)
        for reply in await execute(self.redis, [pack("HDEL", b, *ids) for b, ids in done.items()]):
            if isinstance(reply, Exception):
                raise reply
        return len(missing)

    async def _scan(
        self,
        reader: AIOKafkaConsumer,
        starts: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
        wanted: set[str],
    ) -> set[str]:
        todo = {tp: s for tp, s in starts.items() if s < ends[tp]}
        found: set[str] = set()
        if not todo:
            return found
        reader.assign(list(todo))
        # every offset of an output topic holds a record: one a fetch skipped is read again
        wait_s = self.settings.kafka_offset_gap_wait_s
        gaps = GapGuard(reader, {tp.topic for tp in todo}, "tongda-router", wait_s)
        for tp, start in todo.items():
            reader.seek(tp, start)
            gaps.expect(tp, start)
        while todo and len(found) < len(wanted):
            batch = await gaps.check(await reader.getmany(*todo, timeout_ms=1000))
            for msgs in batch.values():
                for m in msgs:
                    for key, value in m.headers or ():
                        if key == EFFECT_HEADER and value.decode() in wanted:
                            found.add(value.decode())
            for tp in list(todo):
                if await reader.position(tp) >= ends[tp]:
                    del todo[tp]
        return found


def _hash(reply: object) -> dict[bytes, bytes]:
    """An HGETALL reply (a flat list in RESP2, a map in RESP3) as a dict."""
    if isinstance(reply, dict):
        return reply
    flat = list(reply)  # type: ignore[call-overload]
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def _finished(task: asyncio.Task[None] | None, raise_errors: bool, what: str) -> None:
    """Await a background step of the outbox; its error is raised, or logged when the caller
    only drains (recovery checks the entries either way)."""
    if task is None:
        return
    try:
        await task
    except Exception:
        if raise_errors:
            raise
        log.warning("%s failed; recovery checks the entries", what, exc_info=True)
