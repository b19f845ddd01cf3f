"""Exactly-once output without Kafka transactions: a Redis outbox per input partition.

The broker tongda must run on (and Apache Kafka without transactions) cannot make "write
state, produce records, commit offset" atomic. So a transition writes its output records
into the outbox of the input partition it came from, in the same Lua call as the state.
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
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import RecordMetadata, TopicPartition
from redis.asyncio import Redis

from services.router.store import Keys
from shared.config import CommonSettings

log = logging.getLogger(__name__)

EFFECT_HEADER = "tongda-effect"


@dataclass(frozen=True)
class OutRecord:
    effect_id: str
    topic: str
    key: bytes
    value: bytes

    def pack(self) -> bytes:
        t, k = self.topic.encode(), self.key
        return f"{len(t)}:{len(k)}:".encode() + t + k + self.value

    @classmethod
    def unpack(cls, effect_id: str, blob: bytes) -> OutRecord:
        lt, lk, rest = blob.split(b":", 2)
        n, m = int(lt), int(lk)
        return cls(effect_id, rest[:n].decode(), rest[n : n + m], rest[n + m :])


class Outbox:
    """Produces a batch's records and clears them; recovers an assigned partition's leftovers."""

    def __init__(
        self,
        redis: Redis,
        producer: AIOKafkaProducer,
        keys: Keys,
        settings: CommonSettings,
        output_topics: Sequence[str],
    ) -> None:
        self.redis = redis
        self.producer = producer
        self.keys = keys
        self.settings = settings
        self.output_topics = list(output_topics)

    async def send(self, records: Sequence[tuple[TopicPartition, OutRecord]]) -> None:
        """Produce records (each noted in the outbox of its input partition), then clear them."""
        pending = list(records)
        delay_s = 0.2
        while pending:
            results = await asyncio.gather(
                *(self._produce(r) for _, r in pending), return_exceptions=True
            )
            sent = [
                (p, m)
                for p, m in zip(pending, results, strict=True)
                if isinstance(m, RecordMetadata)
            ]
            if sent:
                await self._clear([p for p, _ in sent], [m for _, m in sent])
            failed = [
                (p, e)
                for p, e in zip(pending, results, strict=True)
                if not isinstance(e, RecordMetadata)
            ]
            if failed:
                log.warning(
                    "%d records not acknowledged (%s); retrying in %.1f s",
                    len(failed),
                    failed[0][1],
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
            pending = [p for p, _ in failed]

    async def _produce(self, r: OutRecord) -> RecordMetadata:
        future = await self.producer.send(
            r.topic, value=r.value, key=r.key, headers=[(EFFECT_HEADER, r.effect_id.encode())]
        )
        meta: RecordMetadata = await future
        return meta

    async def _clear(
        self, records: Sequence[tuple[TopicPartition, OutRecord]], metas: Sequence[RecordMetadata]
    ) -> None:
        top: dict[str, int] = {}
        for m in metas:
            field = f"{m.topic}:{m.partition}"
            top[field] = max(top.get(field, -1), m.offset + 1)
        by_input: dict[TopicPartition, list[str]] = {}
        for tp, r in records:
            by_input.setdefault(tp, []).append(r.effect_id)
        pipe = self.redis.pipeline(transaction=False)
        for tp, ids in by_input.items():
            pipe.hdel(self.keys.outbox(tp.topic, tp.partition), *ids)
            pipe.hset(self.keys.outpos(tp.topic, tp.partition), mapping=top)  # type: ignore[arg-type]
        await pipe.execute()

    async def _output_partitions(self, reader: AIOKafkaConsumer) -> list[TopicPartition]:
        tps = []
        for topic in self.output_topics:
            parts = reader.partitions_for_topic(topic)
            if parts is None:
                await reader._client.force_metadata_update()
                parts = reader.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        return tps

    async def recover(self, inputs: Iterable[TopicPartition]) -> int:
        """Before consuming `inputs`: resend what their outbox holds and the broker lacks."""
        inputs = list(inputs)
        if not inputs:
            return 0
        reader = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.settings.kafka_client_id}-outbox-recovery",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=self.settings.kafka_fetch_max_wait_ms,
            max_partition_fetch_bytes=self.settings.kafka_max_request_bytes,
            request_timeout_ms=self.settings.kafka_request_timeout_ms,
        )
        await reader.start()
        try:
            out_tps = await self._output_partitions(reader)
            ends: dict[TopicPartition, int] = await reader.end_offsets(out_tps)
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
        box_key = self.keys.outbox(tp.topic, tp.partition)
        pending_raw: dict[bytes, bytes] = await self.redis.hgetall(box_key)  # type: ignore[assignment]
        raw_pos: dict[bytes, bytes] = await self.redis.hgetall(pos_key)  # type: ignore[assignment]
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
        await self.redis.hdel(box_key, *pending)
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
        for tp, start in todo.items():
            reader.seek(tp, start)
        while todo and len(found) < len(wanted):
            batch = await reader.getmany(*todo, timeout_ms=1000)
            for msgs in batch.values():
                for m in msgs:
                    for key, value in m.headers or ():
                        if key == EFFECT_HEADER and value.decode() in wanted:
                            found.add(value.decode())
            for tp in list(todo):
                if await reader.position(tp) >= ends[tp]:
                    del todo[tp]
        return found
