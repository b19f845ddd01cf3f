"""The router's per-notification state, as stored (JSON) in Redis."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.contract.models import Category, Channel, Outcome, Priority

Phase = Literal["dispatched", "retry_wait", "final"]
Status = Literal["pending", "delivered", "failed", "expired", "suppressed"]


class _State(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Leg(_State):
    """One address to try on one channel: a plan step expands into one or more legs."""

    step: int
    channel: Channel
    address: str | None
    kind: Literal["borrower", "alt_phone", "backup_contact"] = "borrower"
    relation: str | None = None
    timeout_s: float
    max_attempts: int
    retry_delay_s: float


class AttemptEntry(_State):
    leg: int
    attempt: int
    channel: Channel
    recipient: str | None  # masked
    outcome: Outcome
    at: datetime
    provider: str | None = None
    detail: str | None = None


class PolicyContext(_State):
    """What contact policy needs from the profile, captured when the notification starts."""

    opted_out_channels: list[Channel] = Field(default_factory=list)
    revoked_channels: list[Channel] = Field(default_factory=list)
    timezone: str | None = None


class NotificationState(_State):
    v: int = 0
    id: str
    customer_id: str
    type: str
    category: Category
    priority: Priority
    locale: str
    data: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime
    expires_at: datetime | None = None
    received_at: datetime
    legs: list[Leg]
    leg: int = 0
    attempt: int = 0
    phase: Phase = "dispatched"
    attempts: list[AttemptEntry] = Field(default_factory=list)
    status: Status = "pending"
    channel: Channel | None = None
    completed_at: datetime | None = None
    policy: PolicyContext = Field(default_factory=PolicyContext)

    @property
    def final(self) -> bool:
        return self.status != "pending"
