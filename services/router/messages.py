"""What the router writes, and the requests it reads, as msgspec Structs (the hot path).

Each mirrors a model of `shared.contract.models` field for field (the contract models stay
the definition and the validators; tests/test_router_machine.py checks that every message
encoded here validates against its model and that the field sets are the same).

`Requested` (with `Contacts` and `BackupContact`) is `notification.requested/v1` with the
same constraints, the same regular expressions included: a request is decoded with it first
(services/router/intake.py), and only a value it refuses goes to the pydantic model, which
then accepts it or names what is wrong (so the dead-letter reasons are the model's). It may
refuse more than the model does (e.g. a time without seconds), never less.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from shared.contract import models
from shared.contract.models import (
    MAX_ADDRESSES,
    Category,
    Channel,
    FinalStatus,
    NotificationRequested,
    Outcome,
    Priority,
)

_Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_Phone = Annotated[str, msgspec.Meta(pattern=models._E164.pattern)]
_Email = Annotated[str, msgspec.Meta(max_length=254, pattern=models._EMAIL.pattern)]
_Locale = Annotated[str, msgspec.Meta(pattern=models._BCP47.pattern)]
_AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
_PushToken = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
_Relation = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class BackupContact(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """shared.contract.models.BackupContact."""

    name: str | None = None
    relation: _Relation = "emergency"
    phone: _Phone | None = None
    email: _Email | None = None


class Contacts(msgspec.Struct, kw_only=True, frozen=True):
    """shared.contract.models.Contacts."""

    phone: _Phone | None = None
    email: _Email | None = None
    push_tokens: Annotated[list[_PushToken], msgspec.Meta(max_length=MAX_ADDRESSES)] | None = None
    backup_contacts: (
        Annotated[list[BackupContact], msgspec.Meta(max_length=MAX_ADDRESSES)] | None
    ) = None


class Requested(msgspec.Struct, kw_only=True, frozen=True):
    """notification.requested/v1 (shared.contract.models.NotificationRequested)."""

    schema_: Literal["notification.requested/v1"] = msgspec.field(name="schema")
    id: _Id
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    customer_id: _Id
    priority: Priority = "normal"
    category: Category | None = None
    locale: _Locale | None = None
    occurred_at: _AwareDatetime
    expires_at: _AwareDatetime | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    contacts: Contacts | None = None


# A request as the router handles it: decoded by the mirror, or by the model (the API, the
# values the mirror refused, tests).
Request = NotificationRequested | Requested
RequestContacts = models.Contacts | Contacts


class Dispatch(msgspec.Struct, kw_only=True):
    """tongda.dispatch/v1 (shared.contract.models.Dispatch)."""

    schema_: Literal["tongda.dispatch/v1"] = msgspec.field(
        default="tongda.dispatch/v1", name="schema"
    )
    notification_id: str
    customer_id: str
    type: str
    category: Category
    priority: Priority
    locale: str
    channel: Channel
    leg: int
    attempt: int
    recipient: str
    recipient_kind: Literal["borrower", "alt_phone", "backup_contact"] = "borrower"
    data: dict[str, Any]
    dispatched_at: datetime
    requested_at: datetime
    template: str | None = None


class CommsRecord(msgspec.Struct, kw_only=True):
    """comms.record/v1 (shared.contract.models.CommsRecord)."""

    schema_: Literal["comms.record/v1"] = msgspec.field(default="comms.record/v1", name="schema")
    record_id: str
    notification_id: str | None = None
    inquiry_id: str | None = None
    customer_id: str | None
    channel: Channel | None
    recipient: str | None
    direction: Literal["outbound", "inbound"] = "outbound"
    outcome: Outcome | None = None
    decision: str | None = None
    attempt: int | None = None
    provider: str | None = None
    provider_message_id: str | None = None
    at: datetime
    intent: str | None = None
    tier: Literal["urgent", "high", "normal"] | None = None


class Attempt(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One entry of notification.status/v1 `attempts`: the one definition of an attempt in
    the router (the state's `AttemptEntry` extends it with its leg and attempt number; the
    contract's pydantic `models.Attempt` is checked against it by test_router_machine)."""

    channel: Channel
    recipient: str | None
    outcome: Outcome
    at: datetime
    provider: str | None = None
    detail: str | None = None


class NotificationStatus(msgspec.Struct, kw_only=True):
    """notification.status/v1 (shared.contract.models.NotificationStatus)."""

    schema_: Literal["notification.status/v1"] = msgspec.field(
        default="notification.status/v1", name="schema"
    )
    notification_id: str
    customer_id: str
    type: str
    status: FinalStatus
    channel: Channel | None
    attempts: list[Attempt]
    completed_at: datetime


_ENCODER = msgspec.json.Encoder()


def encode(message: Dispatch | CommsRecord | NotificationStatus) -> bytes:
    return _ENCODER.encode(message)
