"""A consumed batch, decoded and validated: what the engine may act on, and what it must
dead-letter (with the reason). No I/O here."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import msgspec
from aiokafka.structs import TopicPartition

from services.router.messages import Request, Requested
from services.router.plans import PlanBook
from shared.config import Topics
from shared.contract.codec import (
    MAX_DEPTH,
    MAX_VALUE_BYTES,
    _deeper_than,
    decode,
    decode_any,
)
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
    requests: list[tuple[TopicPartition, Record, Request]] = field(
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

    def missing(self, req: Request) -> list[str]:
        data, required = req.data, self.required(req.type, req.locale)
        if all(data.get(v) is not None for v in required):  # the common case: nothing
            return []
        return sorted(v for v in required if data.get(v) is None)


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


_REQUESTED = msgspec.json.Decoder(Requested)
# Where the mirror and the model could read the same text differently, the model decides:
# a time with more than 6 decimals of a second (msgspec rounds them, pydantic truncates), and
# any escaped character in U+0020–U+003F (digits, ':', '.', '+', '-' written as \u00XX could
# hide such a time from the first test). Data with these only takes the model's (slower) path.
# (Two searches: one alternation starting with a digit class is 10× slower.)
_LONG_FRACTION = re.compile(rb":\d\d\.\d{7}")
_ESCAPED_ASCII = re.compile(rb"\\u00[23]")


def _request(msg: Record, plans: PlanBook, needs: MessageNeeds | None) -> Request:
    req: Request | None = fast_request(msg.value)
    if req is None:
        req = decode(msg.value, NotificationRequested)
    check_request(req, plans, needs)
    return req


def fast_request(raw: bytes | None) -> Requested | None:
    """`raw` decoded by the msgspec mirror of the model (services/router/messages.py), or
    None: the model must decide (an invalid value, or one the mirror may not read alike)."""
    if raw is None or len(raw) > MAX_VALUE_BYTES:
        return None
    if _LONG_FRACTION.search(raw) or _ESCAPED_ASCII.search(raw):
        return None
    try:
        req = _REQUESTED.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None
    # as `decode` checks a valid value: no more brackets than levels allowed, or `data`
    # within them (too deep: the model's path names where)
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and _deeper_than(req.data, MAX_DEPTH - 1):
        return None
    return req


def check_request(req: Request, plans: PlanBook, needs: MessageNeeds | None) -> None:
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
