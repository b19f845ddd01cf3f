"""The router's high-volume path: batches from aiokafka, one Lua call per chunk of transitions.

One consumer reads `customers.profiles`, `notifications.requested` and the router inbox
(attempt outcomes and timer events). Each batch: the records are decoded (intake.py; the
invalid ones dead-lettered with the reason); profiles are written first; requests and inbox
events become transitions of the state machine (machine.py), packed with their output records
(packing.py) and applied by pipelined EVALSHA rounds: a transition whose state or frequency
ledger changed since it was read is decided again in the next round. The outbox is produced
without awaiting each send; offsets are committed only after all of that is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime as Datetime
from functools import partial
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.structs import TopicPartition
from redis.asyncio import Redis

from services.router.controls import (
    apply_controls,
    controls_commands,
    parse_controls,
    read_controls,
)
from services.router.inquiries.index import SenderIndex
from services.router.intake import InboxEvent, Intake, MessageNeeds, read_batch
from services.router.ledger import LedgerView
from services.router.machine import Effects, Machine
from services.router.observe import observe
from services.router.outbox import Outbox, OutRecord
from services.router.packing import Pending, merge, pack, writes_ledger
from services.router.push_filter import without_dead_tokens
from services.router.state import NotificationState
from services.router.store import Read, Store
from shared.clock import Clock
from shared.config import RouterSettings
from shared.contract.models import AttemptOutcome, CustomerProfile
from shared.errors import InvalidEvent
from shared.gctune import gc_paused
from shared.health import LagMeter, Watchdog
from shared.kafka import Batch, FetchWait, GapGuard, Record, send_deadletter
from shared.metrics import BATCH_SECONDS, BATCH_SIZE, EVENTS_CONSUMED, STALE_EVENTS
from shared.resp import pack as pack_command
from shared.signing import Signer

log = logging.getLogger(__name__)

MAX_CONFLICT_ROUNDS = 8
APPLY_CHUNK = 200  # transitions per write to Redis while the next ones are computed

T = TypeVar("T")
InboxItem = tuple[TopicPartition, Record, InboxEvent]


class RouterEngine:
    """Turns consumed batches into durable state and produced records."""

    service = "tongda-router"

    def __init__(
        self,
        settings: RouterSettings,
        redis: Redis,
        store: Store,
        outbox: Outbox,
        machine: Machine,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.store = store
        self.outbox = outbox
        self.machine = machine
        self.clock = clock or settings.clock()
        self.topics = settings.topics
        self.needs = MessageNeeds(machine.plans)
        self.senders = SenderIndex(
            redis, store.keys, settings.address_hash_key.get_secret_value().encode()
        )
        self.signer = Signer.from_settings(settings)  # the inbox is signed (shared/signing.py)
        # readiness: 503 when no batch completed for stall_after_s while records wait
        self.watchdog = Watchdog(
            self.service,
            settings.stall_after_s,
            logger=log,
            backoff_s=(0.5, 1.0, 2.0, 4.0, 8.0, 10.0),
        )
        # Held while a batch is processed (state, records, outbox cleared). Rebalance callbacks
        # take it too, so a partition never moves, and is never recovered, mid-batch.
        self.batch_lock = asyncio.Lock()
        self.gaps: GapGuard | None = None  # set by run(): offsets a fetch skipped are read again

    # --- the loop -------------------------------------------------------------------------

    def input_topics(self) -> list[str]:
        return [self.topics.profiles, self.topics.requested, self.topics.router_inbox]

    def gapless_topics(self) -> list[str]:
        """The inputs where every offset holds a record (shared.kafka.GapGuard): the inbox,
        and the requests when `kafka_offset_gap_check_requests` says their producers write
        no transaction markers. Profiles are compacted: their gaps are normal."""
        if self.settings.kafka_offset_gap_check_requests:
            return [self.topics.router_inbox, self.topics.requested]
        return [self.topics.router_inbox]

    async def run(self, consumer: AIOKafkaConsumer, stopping: asyncio.Event) -> None:
        """Consume until `stopping` is set; the batch in hand is finished and committed."""
        lag = LagMeter(self.service, consumer)  # tongda_consumer_lag_records, after every fetch
        fetch_wait = FetchWait(consumer, self.settings.kafka_fetch_max_wait_ms)
        gaps = self.gaps = GapGuard(
            consumer, self.gapless_topics(), self.service, self.settings.kafka_offset_gap_wait_s
        )
        self.watchdog.lag = lag.update
        # A batch's records are acknowledged and its offsets committed while the next batch
        # is fetched and processed (two broker round trips fewer on each batch's path, which
        # is the latency of the records waiting for it); the offsets only after the records;
        # each commit is awaited before the next one starts, and the last before return.
        commit: asyncio.Task[None] | None = None
        try:
            while not stopping.is_set():
                batch: Batch = await consumer.getmany(timeout_ms=200)
                waiting = await lag.update()
                fetch_wait.after_fetch(sum(len(msgs) for msgs in batch.values()), waiting)
                batch = await gaps.check(batch)
                if not batch:
                    self.watchdog.nothing_fetched(waiting)
                    if self.outbox.failed():  # raised and retried (with recovery) as before
                        async with self.batch_lock:
                            await self.process_until_done({}, consumer.assignment())
                        self.watchdog.batch_done()
                    continue
                self.watchdog.batch_started(sum(len(msgs) for msgs in batch.values()))
                async with self.batch_lock:
                    await self.process_until_done(batch, consumer.assignment())
                # Outside the lock: a commit refused by a rebalance only means redelivery,
                # which the state versions turn into no-ops.
                if commit is not None:
                    done, commit = commit, None
                    await done
                offsets = {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()}
                commit = asyncio.create_task(self._commit(consumer, offsets, self.outbox.in_flight))
                self.watchdog.batch_done()
        finally:
            if commit is not None:
                await commit
            await self.outbox.flush()

    @staticmethod
    async def _commit(
        consumer: AIOKafkaConsumer,
        offsets: dict[TopicPartition, int],
        sending: asyncio.Task[None] | None,
    ) -> None:
        """Commit a batch's offsets once its records are acknowledged. If sending them failed,
        nothing is committed: the next `Outbox.start_send` raises the error and the batch
        loop retries with recovery (`process_until_done`), as when the send was awaited."""
        if sending is not None:
            try:
                await sending
            except Exception:
                return
        await consumer.commit(offsets)

    async def process_until_done(self, batch: Batch, assigned: Iterable[TopicPartition]) -> None:
        """Process a batch; on Redis/Kafka errors recover the outbox and try again, backing
        off (the watchdog logs a repeated failure at a bounded rate and flips readiness)."""
        while True:
            try:
                with gc_paused():  # the batch's objects live until it is done (gctune.py)
                    await self.process(batch)
                return
            except Exception as exc:
                await asyncio.sleep(self.watchdog.failed(exc))
                try:
                    await self.store.load_scripts()
                    await self.outbox.recover(assigned)
                except Exception as again:
                    self.watchdog.log.log(
                        logging.ERROR,
                        f"recovery: {again!r}",
                        "recovery failed; will retry: %r",
                        again,
                    )

    async def process(self, batch: Batch) -> None:
        started = time.perf_counter()
        now = self.clock.now()
        for tp, msgs in batch.items():
            EVENTS_CONSUMED.labels(service=self.service, topic=tp.topic).inc(len(msgs))
        intake = read_batch(batch, self.topics, self.machine.plans, self.needs, self.signer.verify)
        pending = await self._profiles(intake, now) if intake.profiles else []
        if intake.requests:
            pending += await self._requests(intake, now)
        if intake.inbox:
            pending += await self._inbox(intake, now)
        records: list[tuple[TopicPartition, OutRecord]] = [
            (p.input_tp, r) for p in pending for r in p.records
        ]
        for p in pending:
            observe(p)
        await asyncio.gather(
            self.outbox.start_send(records),  # acknowledged while the next batch is processed
            *(
                send_deadletter(self.outbox.producer, self.settings, m, e, self.service)
                for m, e in intake.dead
            ),
        )
        BATCH_SIZE.labels(service=self.service).observe(intake.size)
        BATCH_SECONDS.labels(service=self.service).observe(time.perf_counter() - started)

    # --- per topic ------------------------------------------------------------------------

    async def _profiles(self, intake: Intake, now: Datetime) -> list[Pending]:
        """Store profiles; for a tombstone, end the customer's notifications in flight
        (`suppressed: erased`, their final statuses produced with the batch), then erase."""
        commands: list[bytes] = []
        erased: dict[str, TopicPartition] = {}
        for tp, cid, profile in intake.profiles:
            if profile is None:
                erased[cid] = tp
                commands.append(self.store.erase_customer(cid))
            else:
                commands.append(
                    pack_command(
                        "SET", self.store.keys.profile(cid), profile.model_dump_json(by_alias=True)
                    )
                )
        finals = await self._erase_in_flight(erased, now) if erased else []
        await self.store.run(commands)
        await self.senders.update([(cid, profile) for _, cid, profile in intake.profiles])
        return finals

    async def _erase_in_flight(
        self, erased: dict[str, TopicPartition], now: Datetime
    ) -> list[Pending]:
        keys = self.store.keys
        members = await self.store.run(
            [pack_command("SMEMBERS", keys.customer_notifications(cid)) for cid in erased], "read"
        )
        owner = {m.decode(): cid for cid, ms in zip(erased, members, strict=True) for m in ms}
        nids = list(owner)
        todo: list[tuple[Pending, str]] = []
        found = await self.store.read_states([(nid, owner[nid]) for nid in nids])
        for nid, state in zip(nids, found, strict=True):
            if state is None:
                continue
            version = state.v
            fx = self.machine.on_erase(state, now)
            if fx is not None:
                todo.append((self._pack(erased[owner[nid]], state, fx, version, {}, now), nid))
        # A transition that lost a race (code 0) is erased all the same, without a status.
        return [p for p, _, code in await self._apply(todo) if code == 1]

    async def _requests(self, intake: Intake, now: Datetime) -> list[Pending]:
        cids = list({r.customer_id for _, _, r in intake.requests})
        todo = intake.requests

        def ledger_cids() -> list[str]:
            return sorted(
                {
                    r.customer_id
                    for _, _, r in todo
                    if self.machine.needs_ledger(r.type, r.category or "")
                }
            )

        # the profiles, the borrowers' controls and the first round's ledgers in one round trip
        first = ledger_cids()
        # (one command per customer group: on Redis Cluster a command is of one hash slot)
        keys = self.store.keys
        reads: list[Read[Any]] = [
            self.store.profiles_read(cids),
            Read(controls_commands(keys, cids), partial(parse_controls, cids)),
        ]
        if first:
            reads.append(self.store.ledgers_read(first, now.timestamp()))
        stored, controls, *first_ledgers = await self.store.run_reads(reads)
        profiles = {
            c: CustomerProfile.model_validate_json(v) if v else None for c, v in stored.items()
        }
        read: dict[str, LedgerView] | None = first_ledgers[0] if first else {}
        # push tokens found dead are left out until the profile changes (push_filter.py)
        todo, profiles = await without_dead_tokens(
            self.store, self.settings, self.machine.plans, todo, profiles
        )
        applied: list[Pending] = []
        for _ in range(MAX_CONFLICT_ROUNDS):
            if not todo:
                return applied
            if read is None:
                ledgers = await self.store.read_ledgers(ledger_cids(), now.timestamp())
            else:
                ledgers, read = read, None
            versions = {cid: lv.version for cid, lv in ledgers.items()}

            def transitions(
                batch: Sequence[tuple[TopicPartition, Record, Any]],
                ledgers: dict[str, LedgerView] = ledgers,
                versions: dict[str, int] = versions,
            ) -> Iterator[tuple[Pending, Any]]:
                for item in batch:
                    tp, msg, req = item
                    try:
                        cid = req.customer_id
                        state, fx = self.machine.start(
                            req, profiles[cid], now, ledgers.get(cid), controls.get(cid)
                        )
                    except Exception as exc:  # a bug must not stop the partition: park it
                        log.exception("cannot start notification")
                        intake.dead.append((msg, InvalidEvent("processing_error", repr(exc))))
                        continue
                    yield self._pack(tp, state, fx, 0, versions, now), item

            results = await self._apply(transitions(todo))
            applied += [p for p, _, code in results if code == 1]
            todo = [item for _, item, code in results if code == 2]  # 0: a duplicate request
        raise RuntimeError(f"the ledgers of {len(todo)} requests kept changing; retrying")

    async def _inbox(self, intake: Intake, now: Datetime) -> list[Pending]:
        groups = dict(intake.inbox)
        applied: list[Pending] = []
        for _ in range(MAX_CONFLICT_ROUNDS):
            if not groups:
                return applied
            nids = list(groups)
            states: dict[str, tuple[int, NotificationState]] = {}
            # the customer the events name (a state is found in that customer's group only)
            ids = [(nid, groups[nid][0][2].customer_id) for nid in nids]
            for nid, state in zip(nids, await self.store.read_states(ids), strict=True):
                if state is None:
                    STALE_EVENTS.labels(reason="unknown_notification").inc(len(groups[nid]))
                    continue
                states[nid] = (state.v, state)
            controls = await read_controls(
                self.redis, self.store.keys, sorted({st.customer_id for _, st in states.values()})
            )
            for _, st in states.values():  # the borrower's opt-outs and hold, as of now
                st.policy = apply_controls(st.policy, controls.get(st.customer_id))
            ledgers = await self._ledgers(
                {st.customer_id for _, st in states.values() if self.machine.needs_ledger(st)},
                now,
            )
            versions = {cid: lv.version for cid, lv in ledgers.items()}

            def transitions(
                states: dict[str, tuple[int, NotificationState]] = states,
                ledgers: dict[str, LedgerView] = ledgers,
                versions: dict[str, int] = versions,
                groups: dict[str, list[InboxItem]] = groups,
            ) -> Iterator[tuple[Pending, str]]:
                for nid, (version, state) in states.items():
                    fx = self._inbox_group(state, groups[nid], now, ledgers, intake)
                    if fx is not None:
                        tp = groups[nid][-1][0]
                        yield self._pack(tp, state, fx, version, versions, now), nid

            results = await self._apply(transitions())
            applied += [p for p, _, code in results if code == 1]
            groups = {nid: groups[nid] for _, nid, code in results if code != 1}
        raise RuntimeError(f"state of {len(groups)} notifications kept changing; retrying")

    def _inbox_group(
        self,
        state: NotificationState,
        events: list[InboxItem],
        now: Datetime,
        ledgers: dict[str, LedgerView],
        intake: Intake,
    ) -> Effects | None:
        ledger = ledgers.get(state.customer_id)
        total: Effects | None = None
        for _, msg, ev in events:
            try:
                fx = (
                    self.machine.on_outcome(state, ev, now, ledger)
                    if isinstance(ev, AttemptOutcome)
                    else self.machine.on_timer(state, ev, now, ledger)
                )
            except Exception as exc:
                log.exception("cannot apply event to notification")
                intake.dead.append((msg, InvalidEvent("processing_error", repr(exc))))
                continue
            if fx is None:
                STALE_EVENTS.labels(reason="stale").inc()
                continue
            if total is None:
                total = fx
            else:
                merge(total, fx)
        return total

    # --- helpers --------------------------------------------------------------------------

    async def _ledgers(self, cids: set[str], now: Datetime) -> dict[str, LedgerView]:
        return await self.store.read_ledgers(sorted(cids), now.timestamp()) if cids else {}

    def _pack(
        self,
        tp: TopicPartition,
        state: NotificationState,
        fx: Effects,
        expected: int,
        versions: dict[str, int],
        now: Datetime,
    ) -> Pending:
        """Pack a transition; later transitions of the same customer in this round expect the
        ledger version this one leaves behind (apply.lua runs them in order)."""
        cid = state.customer_id
        version = versions.get(cid, 0)
        p = pack(
            tp,
            state,
            fx,
            expected,
            self.topics,
            self.store.keys,
            version,
            now.timestamp() - self.store.ledger_horizon_s,
        )
        if writes_ledger(fx):
            versions[cid] = version + 1
        return p

    async def _apply(self, items: Iterable[tuple[Pending, T]]) -> list[tuple[Pending, T, int]]:
        """Compute and apply transitions, one Lua call per chunk (on Redis Cluster one per
        customer group in the chunk), each chunk written to Redis as soon as it is computed so
        Redis works on it while the next is computed. Each result code: 1 applied, 0 the state
        changed, 2 the ledger changed (decide again)."""
        done: list[tuple[Pending, T]] = []
        commands: list[bytes] = []

        async def write(chunk: list[tuple[Pending, T]]) -> None:
            calls = self.store.apply([p.transition for p, _ in chunk])
            for command, positions in calls:
                commands.append(command)
                done.extend(chunk[i] for i in positions)
            await stream.write(commands[-len(calls) :])

        async with self.store.stream() as stream:
            chunk: list[tuple[Pending, T]] = []
            for item in items:
                chunk.append(item)
                if len(chunk) == APPLY_CHUNK:
                    await write(chunk)
                    chunk = []
            if chunk:
                await write(chunk)
            # timed from the last write: for a batch of one chunk, apply.lua's round trip
            replies = await self.store.meter.timed("apply", stream.replies())
        replies = await self.store.settle(commands, replies)
        codes = [int(r) for reply in replies for r in reply]
        return [(p, item, code) for (p, item), code in zip(done, codes, strict=True)]


class RecoveringListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets the batch in hand finish before partitions move; recovers each newly assigned
    partition's outbox before its first batch."""

    def __init__(self, engine: RouterEngine) -> None:
        self.engine = engine

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.engine.batch_lock:  # waits for the in-flight batch to be cleared
            await self.engine.outbox.flush()  # its records on the broker before the next owner

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if self.engine.gaps is not None:
            self.engine.gaps.forget(assigned)  # they start at their committed offsets
        async with self.engine.batch_lock:
            resent = await self.engine.outbox.recover(assigned)
        if resent:
            log.warning("outbox recovery resent %d records", resent)
