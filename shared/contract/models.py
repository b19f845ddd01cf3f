"""Pydantic models of every value in the contract and of tongda's internal messages.

Each model's `schema` field carries `"<name>/v<major>"`. Unknown extra fields are accepted
(the contract's forward-compatibility rule); a new major version is a different model.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

Channel = Literal["sms", "email", "push", "voice"]
CHANNELS: tuple[Channel, ...] = get_args(Channel)
Outcome = Literal[
    "delivered",
    "busy",
    "no_answer",
    "voicemail",
    "rejected",
    "bounced",
    "failed",
    "suppressed",
    "deferred",
]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
FinalStatus = Literal["delivered", "failed", "expired", "suppressed"]
Priority = Literal["low", "normal", "high", "urgent"]
Tier = Literal["urgent", "high", "normal"]
Category = Literal["transactional", "reminder", "collection", "verification", "marketing"]
Relation = Annotated[str, StringConstraints(min_length=1, max_length=64)]

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_BCP47 = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_LOCAL_TIME = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _e164(value: str) -> str:
    if not _E164.match(value):
        raise ValueError("must be an E.164 phone number, e.g. +8613800138000")
    return value


def _email(value: str) -> str:
    if len(value) > 254 or not _EMAIL.match(value):
        raise ValueError("must be an email address")
    return value


def _bcp47(value: str) -> str:
    if not _BCP47.match(value):
        raise ValueError("must be a BCP 47 language tag, e.g. zh-CN")
    return value


def _iana_tz(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("must be an IANA time zone, e.g. Asia/Shanghai") from exc
    return value


def _local_time(value: str) -> str:
    if not _LOCAL_TIME.match(value):
        raise ValueError("must be a local time HH:MM")
    return value


Phone = Annotated[str, AfterValidator(_e164)]
Email = Annotated[str, AfterValidator(_email)]
Locale = Annotated[str, AfterValidator(_bcp47)]
TimeZone = Annotated[str, AfterValidator(_iana_tz)]
LocalTime = Annotated[str, AfterValidator(_local_time)]
PushToken = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# At most this many addresses per list (alt phones, push tokens, backup contacts): each one
# becomes a leg, so a profile with 10,000 phones would make 10,000 calls.
MAX_ADDRESSES = 10


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class BackupContact(_Model):
    name: str | None = None
    relation: Relation = "emergency"
    phone: Phone | None = None
    email: Email | None = None


class Contacts(_Model):
    phone: Phone | None = None
    email: Email | None = None
    push_tokens: list[PushToken] | None = Field(default=None, max_length=MAX_ADDRESSES)
    backup_contacts: list[BackupContact] | None = Field(default=None, max_length=MAX_ADDRESSES)


class NotificationRequested(_Model):
    schema_: Literal["notification.requested/v1"] = Field(alias="schema")
    id: Id
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    customer_id: Id
    priority: Priority = "normal"
    category: Category | None = None
    locale: Locale | None = None
    occurred_at: AwareDatetime
    expires_at: AwareDatetime | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    contacts: Contacts | None = None


class QuietHours(_Model):
    from_: LocalTime = Field(alias="from")
    to: LocalTime


class CustomerProfile(_Model):
    schema_: Literal["customer.profile/v1"] = Field(alias="schema")
    customer_id: Id
    name: str | None = None
    phone: Phone | None = None
    alt_phones: list[Phone] = Field(default_factory=list, max_length=MAX_ADDRESSES)
    email: Email | None = None
    push_tokens: list[PushToken] = Field(default_factory=list, max_length=MAX_ADDRESSES)
    timezone: TimeZone | None = None
    locale: Locale | None = None
    preferred_channels: list[Channel] = Field(default_factory=list)
    opted_out_channels: list[Channel] = Field(default_factory=list)
    backup_contacts: list[BackupContact] = Field(default_factory=list, max_length=MAX_ADDRESSES)
    quiet_hours: list[QuietHours] = Field(default_factory=list, max_length=MAX_ADDRESSES)
    consents: dict[Channel, Literal["granted", "revoked"]] = Field(default_factory=dict)
    updated_at: AwareDatetime | None = None


class Attempt(_Model):
    channel: Channel
    recipient: str | None  # masked
    outcome: Outcome
    at: datetime
    provider: str | None = None
    detail: str | None = None


class NotificationStatus(_Model):
    schema_: Literal["notification.status/v1"] = Field(
        default="notification.status/v1", alias="schema"
    )
    notification_id: str
    customer_id: str
    type: str
    status: FinalStatus
    channel: Channel | None
    attempts: list[Attempt]
    completed_at: datetime


class CommsRecord(_Model):
    schema_: Literal["comms.record/v1"] = Field(default="comms.record/v1", alias="schema")
    record_id: str
    notification_id: str | None = None
    inquiry_id: str | None = None
    customer_id: str | None
    channel: Channel | None
    recipient: str | None  # masked
    direction: Literal["outbound", "inbound"] = "outbound"
    outcome: Outcome | None = None
    decision: str | None = None
    attempt: int | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    at: datetime
    intent: str | None = None  # inquiries only
    tier: Tier | None = None  # inquiries only (None for opt-out, opt-in and feedback)


class InquiryReceived(_Model):
    schema_: Literal["inquiry.received/v1"] = Field(alias="schema")
    id: Id
    customer_id: Id | None = None
    channel: Channel
    from_: Annotated[str, StringConstraints(min_length=1, max_length=320)] = Field(alias="from")
    text: Annotated[str, StringConstraints(max_length=10_000)]
    received_at: AwareDatetime
    in_reply_to: Id | None = None


class InquiryEscalated(_Model):
    schema_: Literal["inquiry.escalated/v1"] = Field(default="inquiry.escalated/v1", alias="schema")
    inquiry_id: str
    customer_id: str | None
    tier: Tier
    intent: str
    text: str
    respond_by: datetime
    channel: Channel
    from_: str = Field(alias="from")
    level: Literal[1, 2] = 1  # 2: respond_by passed without inquiry.resolved/v1


class InquiryResolved(_Model):
    schema_: Literal["inquiry.resolved/v1"] = Field(alias="schema")
    inquiry_id: Id
    customer_id: Id | None = None
    resolved_at: AwareDatetime
    resolution: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    agent: Id | None = None  # an agent id, not a name


class InquiryFeedback(_Model):
    schema_: Literal["inquiry.feedback/v1"] = Field(default="inquiry.feedback/v1", alias="schema")
    inquiry_id: str
    customer_id: str | None
    score: Annotated[int, Field(ge=1, le=5)]
    channel: Channel
    received_at: datetime


PreferenceState = Literal["opted_out", "opted_in"]


class CustomerPreference(_Model):
    schema_: Literal["customer.preference/v1"] = Field(
        default="customer.preference/v1", alias="schema"
    )
    customer_id: str
    channel: Channel
    state: PreferenceState
    source: Literal["inbound_keyword", "api"]
    at: datetime


# --- tongda's internal messages (not part of the outside contract) ---------------------------


class Dispatch(_Model):
    """Router → channel service: make one attempt on one leg of a notification's plan."""

    schema_: Literal["tongda.dispatch/v1"] = Field(default="tongda.dispatch/v1", alias="schema")
    notification_id: str
    customer_id: str
    type: str
    category: Category
    priority: Priority
    locale: str
    channel: Channel
    leg: int
    attempt: int
    recipient: str  # the real address: internal topics carry it, logs never do
    recipient_kind: Literal["borrower", "alt_phone", "backup_contact"] = "borrower"
    data: dict[str, Any] = Field(default_factory=dict)
    dispatched_at: datetime
    requested_at: datetime
    # The message to render when it is not the notification type's own (e.g. `missed_call`,
    # an inquiry reply `reply.amount_due`); None: render `type`.
    template: str | None = None


class AttemptOutcome(_Model):
    """Channel service → router: the canonical outcome of one attempt."""

    schema_: Literal["tongda.outcome/v1"] = Field(default="tongda.outcome/v1", alias="schema")
    notification_id: str
    customer_id: str
    channel: Channel
    leg: int
    attempt: int
    outcome: Outcome
    provider: str
    provider_message_id: str | None = None
    detail: str | None = None
    at: datetime


class TimerFired(_Model):
    """Scheduler → router: a scheduled piece of work is due (step timeout, retry, expiry)."""

    schema_: Literal["tongda.timer/v1"] = Field(default="tongda.timer/v1", alias="schema")
    kind: Literal["step_timeout", "retry", "expire"]
    notification_id: str
    customer_id: str
    leg: int
    attempt: int
    due_at: datetime


CONTRACT_MODELS: dict[str, type[_Model]] = {
    "notification.requested/v1": NotificationRequested,
    "customer.profile/v1": CustomerProfile,
    "notification.status/v1": NotificationStatus,
    "comms.record/v1": CommsRecord,
    "inquiry.received/v1": InquiryReceived,
    "inquiry.escalated/v1": InquiryEscalated,
    "inquiry.resolved/v1": InquiryResolved,
    "inquiry.feedback/v1": InquiryFeedback,
    "customer.preference/v1": CustomerPreference,
}
INTERNAL_MODELS: dict[str, type[_Model]] = {
    "tongda.dispatch/v1": Dispatch,
    "tongda.outcome/v1": AttemptOutcome,
    "tongda.timer/v1": TimerFired,
}
