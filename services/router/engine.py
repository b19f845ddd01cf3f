"""The router's high-volume path: batches from aiokafka, one Lua call per notification.

One consumer reads `customers.profiles`, `notifications.requested` and the router inbox
(attempt outcomes and timer events). Each batch: profiles are written first; requests and
inbox events become transitions of the state machine, applied by one pipelined round of
EVALSHA (state, outbox, timers, timeline together); the outbox is produced without awaiting
each send; offsets are committed only after all of that is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import TopicPartition
from redis.asyncio import Redis

from services.router.machine import Effects, Machine
from services.router.messages import encode
from services.router.outbox import Outbox, OutRecord
from services.router.state import NotificationState, decode_state, encode_state
from services.router.store import Store, Transition
from shared.config import RouterSettings
from shared.contract.codec import decode, decode_any
from shared.contract.models import (
    AttemptOutcome,
    CustomerProfile,
    NotificationRequested,
    TimerFired,
)
from shared.errors import InvalidEvent
from shared.kafka import Batch, Record, send_deadletter
from shared.metrics import (
    ATTEMPTS,
    BATCH_SECONDS,
    BATCH_SIZE,
    EVENTS_CONSUMED,
    FALLBACKS,
    NOTIFICATION_SECONDS,
    NOTIFICATIONS_FINAL,
    STALE_EVENTS,
)
from shared.resp import pack

log = logging.getLogger(__name__)

INBOX_SCHEMAS = ("tongda.outcome/v1", "tongda.timer/v1")
MAX_CONFLICT_ROUNDS = 5
APPLY_CHUNK = 200  # transitions per write to Redis while the next ones are computed


@dataclass
class _Pending:
    """A computed transition waiting for its Lua call, with what to do once applied."""

    transition: Transition
    records: list[OutRecord]
    effects: Effects
    state: NotificationState
    input_tp: TopicPartition


@dataclass
class _BatchOut:
    records: list[tuple[TopicPartition, OutRecord]] = field(default_factory=list)
    dead: list[tuple[Record, InvalidEvent]] = field(default_factory=list)


def merge(into: Effects, fx: Effects) -> None:
    """Fold `fx` (later) into `into` (earlier); a timer added then removed nets to nothing."""
    into.dispatches += fx.dispatches
    into.records += fx.records
    into.final = fx.final or into.final
    into.fallbacks += fx.fallbacks
    removed = set(fx.timers_del)
    added = {m for m, _ in into.timers_add}
    into.timers_add = [(m, s) for m, s in into.timers_add if m not in removed] + fx.timers_add
    into.timers_del = [m for m in into.timers_del if m not in {a for a, _ in fx.timers_add}]
    into.timers_del += [m for m in fx.timers_del if m not in added]


class RouterEngine:
    """Turns consumed batches into durable state and produced records."""

    service = "tongda-router"

    def __init__(
        self, settings: RouterSettings, redis: Redis, store: Store, outbox: Outbox, machine: Machine
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store
        self.outbox = outbox
        self.machine = machine
        self.topics = settings.topics
        # Held while a batch is processed (state, records, outbox cleared). Rebalance callbacks
        # take it too, so a partition never moves, and is never recovered, mid-batch.
        self.batch_lock = asyncio.Lock()

    # --- the loop -------------------------------------------------------------------------

    def input_topics(self) -> list[str]:
        return [self.topics.profiles, self.topics.requested, self.topics.router_inbox]

    async def run(self, consumer: AIOKafkaConsumer, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set; the batch in hand is finished and committed."""
        while not stopping.is_set():
            batch: Batch = await consumer.getmany(timeout_ms=200)
            if not batch:
                continue
            async with self.batch_lock:
                await self.process_until_done(batch, consumer.assignment())
            # Outside the lock: a commit refused by a rebalance only means redelivery, which
            # the state versions turn into no-ops.
            await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})

    async def process_until_done(self, batch: Batch, assigned: Iterable[TopicPartition]) -> None:
        """Process a batch; on Redis/Kafka errors recover the outbox and try again."""
        delay_s = 0.5
        while True:
            try:
                await self.process(batch)
                return
            except Exception:
                log.exception("batch failed; recovering and retrying in %.1f s", delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
                try:
                    await self.store.load_scripts()
                    await self.outbox.recover(assigned)
                except Exception:
                    log.exception("recovery failed; will retry")

    async def process(self, batch: Batch) -> None:
        started = time.perf_counter()
        now = datetime.now(UTC)
        by_topic: dict[str, list[tuple[TopicPartition, Record]]] = {}
        size = 0
        for tp, msgs in batch.items():
            by_topic.setdefault(tp.topic, []).extend((tp, m) for m in msgs)
            EVENTS_CONSUMED.labels(service=self.service, topic=tp.topic).inc(len(msgs))
            size += len(msgs)
        out = _BatchOut()
        if self.topics.profiles in by_topic:
            await self._profiles(by_topic[self.topics.profiles], out)
        pending: list[_Pending] = []
        if self.topics.requested in by_topic:
            pending += await self._requested(by_topic[self.topics.requested], now, out)
        if self.topics.router_inbox in by_topic:
            pending += await self._inbox(by_topic[self.topics.router_inbox], now, out)
        for p in pending:
            out.records += [(p.input_tp, r) for r in p.records]
            self._observe(p)
        await asyncio.gather(
            self.outbox.send(out.records),
            *(
                send_deadletter(self.outbox.producer, self.settings, m, e, self.service)
                for m, e in out.dead
            ),
        )
        BATCH_SIZE.labels(service=self.service).observe(size)
        BATCH_SECONDS.labels(service=self.service).observe(time.perf_counter() - started)

    # --- per topic ------------------------------------------------------------------------

    async def _profiles(
        self, items: Sequence[tuple[TopicPartition, Record]], out: _BatchOut
    ) -> None:
        commands: list[bytes] = []
        for _, msg in items:
            key = msg.key.decode(errors="replace") if msg.key else None
            if msg.value is None:
                if not key:
                    out.dead.append(
                        (
                            msg,
                            InvalidEvent(
                                "missing_key",
                                "a profile tombstone needs the customer_id as its key",
                            ),
                        )
                    )
                    continue
                commands.append(self.store.erase_customer(key))
                continue
            try:
                profile = decode(msg.value, CustomerProfile)
                if key is not None and key != profile.customer_id:
                    raise InvalidEvent("key_mismatch", "record key differs from customer_id")
            except InvalidEvent as exc:
                out.dead.append((msg, exc))
                continue
            commands.append(
                pack(
                    "SET",
                    self.store.keys.profile(profile.customer_id),
                    profile.model_dump_json(by_alias=True),
                )
            )
        await self.store.run(commands)

    async def _requested(
        self, items: Sequence[tuple[TopicPartition, Record]], now: datetime, out: _BatchOut
    ) -> list[_Pending]:
        reqs: list[tuple[TopicPartition, Record, NotificationRequested]] = []
        for tp, msg in items:
            try:
                req = decode(msg.value, NotificationRequested)
                if self.machine.plans.get(req.type) is None:
                    raise InvalidEvent(
                        "unknown_type",
                        f"type: {req.type!r} has no routing plan; known types: "
                        f"{', '.join(sorted(self.machine.plans.plans))}",
                    )
            except InvalidEvent as exc:
                out.dead.append((msg, exc))
                continue
            reqs.append((tp, msg, req))
        if not reqs:
            return []
        cids = list({r.customer_id for _, _, r in reqs})
        (raw_profiles,) = await self.store.run(
            [pack("MGET", *[self.store.keys.profile(c) for c in cids])]
        )
        profiles = {
            c: CustomerProfile.model_validate_json(v) if v else None
            for c, v in zip(cids, raw_profiles, strict=True)
        }

        def transitions() -> Iterator[_Pending]:
            for tp, msg, req in reqs:
                try:
                    state, fx = self.machine.start(req, profiles[req.customer_id], now)
                except Exception as exc:  # a bug must not stop the partition: park the event
                    log.exception("cannot start notification")
                    out.dead.append((msg, InvalidEvent("processing_error", repr(exc))))
                    continue
                yield self._pending(tp, state, fx, expected=0)

        return [p for p, ok in await self._apply(transitions()) if ok]

    async def _inbox(
        self, items: Sequence[tuple[TopicPartition, Record]], now: datetime, out: _BatchOut
    ) -> list[_Pending]:
        groups: dict[str, list[tuple[TopicPartition, Record, AttemptOutcome | TimerFired]]] = {}
        for tp, msg in items:
            try:
                ev = decode_any(msg.value, *INBOX_SCHEMAS)
            except InvalidEvent as exc:
                out.dead.append((msg, exc))
                continue
            assert isinstance(ev, AttemptOutcome | TimerFired)
            groups.setdefault(ev.notification_id, []).append((tp, msg, ev))
        applied: list[_Pending] = []
        for _ in range(MAX_CONFLICT_ROUNDS):
            if not groups:
                break
            nids = list(groups)
            rows = await self.store.read_states(nids)

            results = await self._apply(self._inbox_transitions(groups, nids, rows, now, out))
            applied += [p for p, ok in results if ok]
            groups = {p.state.id: groups[p.state.id] for p, ok in results if not ok}
        if groups:
            raise RuntimeError(f"state of {len(groups)} notifications kept changing; retrying")
        return applied

    def _inbox_transitions(
        self,
        groups: dict[str, list[tuple[TopicPartition, Record, AttemptOutcome | TimerFired]]],
        nids: list[str],
        rows: list[Any],
        now: datetime,
        out: _BatchOut,
    ) -> Iterator[_Pending]:
        for nid, (v, raw) in zip(nids, rows, strict=True):
            if v is None:
                STALE_EVENTS.labels(reason="unknown_notification").inc(len(groups[nid]))
                continue
            p = self._inbox_group(nid, int(v), raw, groups[nid], now, out)
            if p is not None:
                yield p

    def _inbox_group(
        self,
        nid: str,
        version: int,
        raw_state: bytes,
        events: list[tuple[TopicPartition, Record, AttemptOutcome | TimerFired]],
        now: datetime,
        out: _BatchOut,
    ) -> _Pending | None:
        state = decode_state(raw_state)
        total: Effects | None = None
        for _, msg, ev in events:
            try:
                fx = (
                    self.machine.on_outcome(state, ev, now)
                    if isinstance(ev, AttemptOutcome)
                    else self.machine.on_timer(state, ev, now)
                )
            except Exception as exc:
                log.exception("cannot apply event to notification")
                out.dead.append((msg, InvalidEvent("processing_error", repr(exc))))
                continue
            if fx is None:
                STALE_EVENTS.labels(reason="stale").inc()
                continue
            if total is None:
                total = fx
            else:
                merge(total, fx)
        if total is None:
            return None
        return self._pending(events[-1][0], state, total, expected=version)

    # --- helpers --------------------------------------------------------------------------

    def _pending(
        self, tp: TopicPartition, state: NotificationState, fx: Effects, expected: int
    ) -> _Pending:
        state.v = expected + 1
        key = state.customer_id.encode()
        base = f"{state.id}/{state.v}/"
        records: list[OutRecord] = []
        timeline: list[bytes] = []
        for d in fx.dispatches:
            records.append(
                OutRecord(f"{base}{len(records)}", self.topics.dispatch(d.channel), key, encode(d))
            )
        for r in fx.records:
            value = encode(r)
            timeline.append(value)
            records.append(OutRecord(f"{base}{len(records)}", self.topics.audit, key, value))
        if fx.final is not None:
            records.append(
                OutRecord(f"{base}{len(records)}", self.topics.status, key, encode(fx.final))
            )
        transition = Transition(
            notification_id=state.id,
            customer_id=state.customer_id,
            expected_version=expected,
            state_json=encode_state(state),
            outbox_key=self.store.keys.outbox(tp.topic, tp.partition),
            outbox=[(r.effect_id, r.pack()) for r in records],
            timers_add=fx.timers_add,
            timers_del=fx.timers_del,
            timeline=timeline,
        )
        return _Pending(transition, records, fx, state, tp)

    async def _apply(self, transitions: Iterable[_Pending]) -> list[tuple[_Pending, bool]]:
        """Compute and apply transitions, one Lua call per chunk, each chunk written to Redis
        as soon as it is computed so Redis works on it while the next is computed."""
        pending: list[_Pending] = []
        commands: list[bytes] = []
        async with self.store.stream() as stream:
            chunk: list[_Pending] = []
            for p in transitions:
                chunk.append(p)
                if len(chunk) == APPLY_CHUNK:
                    commands.append(self.store.apply([c.transition for c in chunk]))
                    await stream.write(commands[-1:])
                    pending += chunk
                    chunk = []
            if chunk:
                commands.append(self.store.apply([c.transition for c in chunk]))
                await stream.write(commands[-1:])
                pending += chunk
            replies = await stream.replies()
        replies = await self.store.settle(commands, replies)
        flags = [r == 1 for reply in replies for r in reply]
        return list(zip(pending, flags, strict=True))

    def _observe(self, p: _Pending) -> None:
        for r in p.effects.records:
            if r.outcome is not None and r.channel is not None and r.outcome != "deferred":
                ATTEMPTS.labels(channel=r.channel, outcome=r.outcome).inc()
        for channel, reason in p.effects.fallbacks:
            FALLBACKS.labels(channel=channel, reason=reason).inc()
        final = p.effects.final
        if final is not None:
            NOTIFICATIONS_FINAL.labels(type=final.type, status=final.status).inc()
            NOTIFICATION_SECONDS.labels(type=final.type, status=final.status).observe(
                max(0.0, (final.completed_at - p.state.occurred_at).total_seconds())
            )


class RecoveringListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets the batch in hand finish before partitions move; recovers each newly assigned
    partition's outbox before its first batch."""

    def __init__(self, engine: RouterEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.engine.batch_lock:  # waits for the in-flight batch to be cleared
            return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.engine.batch_lock:
            resent = await self.engine.outbox.recover(assigned)
        if resent:
            log.warning("outbox recovery resent %d records", resent)
