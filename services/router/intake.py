"""A consumed batch, decoded and validated: what the engine may act on, and what it must
dead-letter (with the reason). No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field

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

INBOX_SCHEMAS = ("tongda.outcome/v1", "tongda.timer/v1")

InboxEvent = AttemptOutcome | TimerFired


@dataclass
class Intake:
    profiles: list[tuple[str, CustomerProfile | None]] = field(default_factory=list)  # None: erase
    requests: list[tuple[TopicPartition, Record, NotificationRequested]] = field(
        default_factory=list
    )
    inbox: dict[str, list[tuple[TopicPartition, Record, InboxEvent]]] = field(
        default_factory=dict
    )  # by notification id, in order
    dead: list[tuple[Record, InvalidEvent]] = field(default_factory=list)
    size: int = 0


def read_batch(batch: Batch, topics: Topics, plans: PlanBook) -> Intake:
    """Decode every record of `batch`; invalid ones are listed in `dead` with the reason."""
    intake = Intake()
    for tp, msgs in batch.items():
        intake.size += len(msgs)
        for msg in msgs:
            try:
                if tp.topic == topics.profiles:
                    intake.profiles.append(_profile(msg))
                elif tp.topic == topics.requested:
                    intake.requests.append((tp, msg, _request(msg, plans)))
                elif tp.topic == topics.router_inbox:
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


def _request(msg: Record, plans: PlanBook) -> NotificationRequested:
    req = decode(msg.value, NotificationRequested)
    if plans.get(req.type) is None:
        raise InvalidEvent(
            "unknown_type",
            f"type: {req.type!r} has no routing plan; known types: "
            f"{', '.join(sorted(plans.plans))}",
        )
    return req
