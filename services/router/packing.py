"""A transition's effects, packed for Redis and Kafka: the records it produces (dispatches,
audit records, the final status), each with its effect id, and the `Transition` apply.lua
writes atomically (state, outbox, timers, timeline, ledger)."""

from __future__ import annotations

import msgspec
from aiokafka.structs import TopicPartition

from services.router.machine import Effects
from services.router.messages import encode
from services.router.outbox import OutRecord
from services.router.state import NotificationState, encode_state
from services.router.store import Keys, Transition
from shared.config import Topics


class Pending(msgspec.Struct):
    """A computed transition waiting for its Lua call, with what to do once applied."""

    transition: Transition
    records: list[OutRecord]
    effects: Effects
    state: NotificationState
    input_tp: TopicPartition


def pack(
    tp: TopicPartition,
    state: NotificationState,
    fx: Effects,
    expected: int,
    topics: Topics,
    keys: Keys,
    ledger_version: int,
    ledger_prune_before: float,
) -> Pending:
    """`state` as version expected + 1, its records with effect ids `<id>/<version>/<n>`.
    `ledger_version`: the ledger version the decisions read (used only if they read it)."""
    state.v = expected + 1
    key = state.customer_id.encode()
    base = f"{state.id}/{state.v}/"
    records: list[OutRecord] = []
    timeline: list[bytes] = []
    for d in fx.dispatches:
        records.append(
            OutRecord(f"{base}{len(records)}", topics.dispatch(d.channel), key, encode(d))
        )
    for r in fx.records:
        value = encode(r)
        timeline.append(value)
        records.append(OutRecord(f"{base}{len(records)}", topics.audit, key, value))
    if fx.final is not None:
        records.append(OutRecord(f"{base}{len(records)}", topics.status, key, encode(fx.final)))
    transition = Transition(
        notification_id=state.id,
        customer_id=state.customer_id,
        expected_version=expected,
        state_json=encode_state(state),
        outbox_key=keys.outbox(tp.topic, tp.partition, state.customer_id),
        outbox=[(r.effect_id, r.pack()) for r in records],
        timers_add=fx.timers_add,
        timers_del=fx.timers_del,
        timeline=timeline,
        ledger_read_version=ledger_version if fx.ledger_read else -1,
        ledger_add=fx.ledger_add,
        ledger_rem=fx.ledger_rem,
        ledger_prune_before=ledger_prune_before,
    )
    return Pending(transition, records, fx, state, tp)


def writes_ledger(fx: Effects) -> bool:
    return bool(fx.ledger_add or fx.ledger_rem)


def merge(into: Effects, fx: Effects) -> None:
    """Fold `fx` (later) into `into` (earlier); a timer added then removed nets to nothing."""
    into.dispatches += fx.dispatches
    into.records += fx.records
    into.final = fx.final or into.final
    into.fallbacks += fx.fallbacks
    into.decisions += fx.decisions
    removed = set(fx.timers_del)
    added = {m for m, _ in into.timers_add}
    into.timers_add = [(m, s) for m, s in into.timers_add if m not in removed] + fx.timers_add
    into.timers_del = [m for m in into.timers_del if m not in {a for a, _ in fx.timers_add}]
    into.timers_del += [m for m in fx.timers_del if m not in added]
    gone = set(fx.ledger_rem)
    into.ledger_add = [(m, s) for m, s in into.ledger_add if m not in gone] + fx.ledger_add
    into.ledger_rem += fx.ledger_rem
    into.ledger_read = into.ledger_read or fx.ledger_read
