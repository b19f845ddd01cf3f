"""A consumed batch, decoded and validated: what the engine may act on, and what it must
dead-letter (with the reason). No I/O here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from aiokafka.structs import TopicPartition

from services.router.plans import PlanBook
from shared.config import Topics
from shared.contract.codec import decode, decode_any
from shared.contract.models import (
    AttemptOutcome,
    CustomerProfile,
    NotificationRequested,
    TimerFired,
)
from shared.errors import InvalidEvent
from shared.kafka import Batch, Record
from shared.templates import required_variables

INBOX_SCHEMAS = ("tongda.outcome/v1", "tongda.timer/v1")

InboxEvent = AttemptOutcome | TimerFired


@dataclass
class Intake:
    # (partition, customer id, profile); None: a tombstone, erase the customer
    profiles: list[tuple[TopicPartition, str, CustomerProfile | None]] = field(default_factory=list)
    requests: list[tuple[TopicPartition, Record, NotificationRequested]] = field(
        default_factory=list
    )
    inbox: dict[str, list[tuple[TopicPartition, Record, InboxEvent]]] = field(
        default_factory=dict
    )  # by notification id, in order
    dead: list[tuple[Record, InvalidEvent]] = field(default_factory=list)
    size: int = 0


class MessageNeeds:
    """The data variables a notification's messages need, per type and locale: every channel
    of its plan, and the side messages its steps may send (the missed-call SMS)."""

    def __init__(self, plans: PlanBook) -> None:
        self.plans = plans
        self.required = lru_cache(maxsize=1024)(self._required)

    def _required(self, type_: str, locale: str | None) -> frozenset[str]:
        plan = self.plans.get(type_)
        if plan is None:
            return frozenset()
        needed: set[str] = set()
        for step in plan.steps:
            needed |= required_variables(type_, step.channel, locale)
            if step.missed_call_sms:
                needed |= required_variables("missed_call", "sms", locale)
        return frozenset(needed)

    def missing(self, req: NotificationRequested) -> list[str]:
        data = req.data
        return sorted(v for v in self.required(req.type, req.locale) if data.get(v) is None)


def read_batch(
    batch: Batch,
    topics: Topics,
    plans: PlanBook,
    needs: MessageNeeds | None = None,
    verify: Callable[[Record], None] | None = None,
) -> Intake:
    """Decode every record of `batch`; invalid ones are listed in `dead` with the reason.
    `verify` checks an inbox record's signature (shared/signing.py) before it is read."""
    intake = Intake()
    for tp, msgs in batch.items():
        intake.size += len(msgs)
        for msg in msgs:
            try:
                if tp.topic == topics.profiles:
                    intake.profiles.append((tp, *_profile(msg)))
                elif tp.topic == topics.requested:
                    intake.requests.append((tp, msg, _request(msg, plans, needs)))
                elif tp.topic == topics.router_inbox:
                    if verify is not None:
                        verify(msg)
                    ev = decode_any(msg.value, *INBOX_SCHEMAS)
                    assert isinstance(ev, AttemptOutcome | TimerFired)
                    intake.inbox.setdefault(ev.notification_id, []).append((tp, msg, ev))
            except InvalidEvent as exc:
                intake.dead.append((msg, exc))
    return intake


def _profile(msg: Record) -> tuple[str, CustomerProfile | None]:
    key = msg.key.decode(errors="replace") if msg.key else None
    if msg.value is None:
        if not key:
            raise InvalidEvent(
                "missing_key", "a profile tombstone needs the customer_id as its key"
            )
        return key, None
    profile = decode(msg.value, CustomerProfile)
    if key is not None and key != profile.customer_id:
        raise InvalidEvent("key_mismatch", "record key differs from customer_id")
    return profile.customer_id, profile


def _request(msg: Record, plans: PlanBook, needs: MessageNeeds | None) -> NotificationRequested:
    req = decode(msg.value, NotificationRequested)
    check_request(req, plans, needs)
    return req


def check_request(req: NotificationRequested, plans: PlanBook, needs: MessageNeeds | None) -> None:
    """What a request needs beyond its schema: a routing plan for its type, and every variable
    its messages use (raises InvalidEvent naming the field). The API runs it too."""
    if plans.get(req.type) is None:
        raise InvalidEvent(
            "unknown_type",
            f"type: {req.type!r} has no routing plan; known types: "
            f"{', '.join(sorted(plans.plans))}",
        )
    missing = needs.missing(req) if needs is not None else []
    if missing:
        names = ", ".join(f"data.{m}" for m in missing)
        raise InvalidEvent(
            "missing_variable",
            f"data.{missing[0]}: required by the {req.type!r} messages; missing: {names}",
        )
