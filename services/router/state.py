"""The router's per-notification state, as stored (JSON) in Redis.

msgspec Structs rather than pydantic models: they are built and serialised once or more per
event on the hot path, and the values in them were validated on the way in. Structs that hold
no containers are not tracked by the garbage collector (`gc=False`: they cannot form cycles).
Fields at their default are left out of the JSON (`omit_defaults`; decoding restores them):
the state is written to Redis on every transition, and half of it was defaults.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from services.router.messages import Attempt
from shared.contract.models import Category, Channel, Priority

Phase = Literal["dispatched", "retry_wait", "final"]
Status = Literal["pending", "delivered", "failed", "expired", "suppressed"]


class Leg(msgspec.Struct, kw_only=True, frozen=True, gc=False, omit_defaults=True):
    """One address to try on one channel: a plan step expands into one or more legs."""

    step: int
    channel: Channel
    address: str | None
    kind: Literal["borrower", "alt_phone", "backup_contact", "notice"] = "borrower"
    relation: str | None = None
    timeout_s: float
    max_attempts: int
    retry_delay_s: float
    # voice call-backs by outcome (seconds; None: move on), at most max_calls calls
    retry_busy_s: float | None = None
    retry_no_answer_s: float | None = None
    retry_voicemail_s: float | None = None
    max_calls: int = 1
    missed_call_sms: bool = False
    template: str | None = None  # notices: the message to send (e.g. missed_call)


class AttemptEntry(Attempt, kw_only=True, frozen=True, gc=False, omit_defaults=True):
    """An attempt as the state keeps it: the status entry (messages.Attempt) and which leg
    and attempt of the plan it was."""

    leg: int
    attempt: int


class PolicyContext(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """What contact policy needs from the profile, captured when the notification starts."""

    opted_out_channels: list[Channel] = msgspec.field(default_factory=list)
    revoked_channels: list[Channel] = msgspec.field(default_factory=list)
    timezone: str | None = None  # resolved: profile, else phone region, else the default
    country: str = "CN"  # for public holidays
    quiet_hours: list[tuple[str, str]] = msgspec.field(default_factory=list)
    # the borrower's own controls (services/router/controls.py), applied before each decision:
    profile_at: float | None = None  # the profile's updated_at (epoch s), for precedence
    profile_opted_out: list[Channel] | None = None  # the profile's list, once controls applied
    hold_until: float | None = None  # a hardship hold on collection (epoch s)


class NotificationState(msgspec.Struct, kw_only=True, omit_defaults=True):
    # the version, first: the stored JSON opens with `{"v":<n>,` and apply.lua checks it there
    v: int = 0
    id: str
    customer_id: str
    type: str
    category: Category
    priority: Priority
    locale: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    occurred_at: datetime
    expires_at: datetime | None = None
    received_at: datetime
    legs: list[Leg]
    leg: int = 0
    attempt: int = 0
    phase: Phase = "dispatched"
    attempts: list[AttemptEntry] = msgspec.field(default_factory=list)
    status: Status = "pending"
    channel: Channel | None = None
    completed_at: datetime | None = None
    policy: PolicyContext = msgspec.field(default_factory=PolicyContext)
    # side messages beside the plan (the missed-call SMS); dispatched with leg index
    # len(legs) + i, their outcomes recorded but never moving the plan
    notices: list[Leg] = msgspec.field(default_factory=list)
    missed_calls: int = 0  # busy / no_answer / voicemail calls on the current leg

    @property
    def final(self) -> bool:
        return self.status != "pending"


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(NotificationState)

# Types whose request data is a secret for the moment only (a one-time code): dropped from the
# stored state as soon as the notification is final, instead of staying readable in Redis for
# `retention_s` (7 days). While it is in flight (minutes for an OTP) a retry or the next leg
# needs it to render the message. docs/reliability.md, "OTP codes in Redis".
EPHEMERAL_DATA_TYPES = frozenset({"otp"})


def encode_state(state: NotificationState) -> bytes:
    if state.data and state.status != "pending" and state.type in EPHEMERAL_DATA_TYPES:
        state = msgspec.structs.replace(state, data={})
    return _ENCODER.encode(state)


def decode_state(raw: bytes) -> NotificationState:
    return _DECODER.decode(raw)
