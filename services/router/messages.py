"""What the router writes, as msgspec Structs: encoded once per attempt on the hot path.

Each mirrors a model of `shared.contract.models` field for field (the contract models stay
the definition and the validators; tests/test_router_machine.py checks that every message
encoded here validates against its model and that the field sets are the same).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from shared.contract.models import Category, Channel, FinalStatus, Outcome, Priority


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
