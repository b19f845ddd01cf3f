"""Routing plans: which channels a notification `type` tries, in which order, with what limits.

Plans are read from YAML (the shipped `plans.yaml` or `TONGDA_PLANS_PATH`) and validated at
start-up, so a typo stops the router with the file and field named instead of misrouting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from services.router.policy.base import parse_duration_s
from shared.contract.codec import describe_validation_error
from shared.contract.models import Category, Channel
from shared.errors import ConfigError

SHIPPED_PLANS = Path(__file__).with_name("plans.yaml")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CallRetry(_Frozen):
    """Call-backs by outcome: `{busy: 15m, no_answer: 2h, voicemail: none, max_calls: 3}`.

    After a busy / unanswered / voicemail call the same number is called again after the
    outcome's delay (`none`: move on to the next step at once), up to `max_calls` calls."""

    busy: str | None = None
    no_answer: str | None = None
    voicemail: str | None = None
    max_calls: int = Field(default=3, ge=1, le=10)

    @field_validator("busy", "no_answer", "voicemail")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is None or v == "none":
            return None
        parse_duration_s(v)
        return v

    def delay_s(self, outcome: str) -> float | None:
        value = {"busy": self.busy, "no_answer": self.no_answer, "voicemail": self.voicemail}
        raw = value.get(outcome)
        return None if raw is None else parse_duration_s(raw)


class Step(_Frozen):
    channel: Channel
    target: Literal["borrower", "backup_contacts"] = "borrower"
    relations: list[str] = Field(default_factory=list)
    timeout_s: float | None = Field(default=None, gt=0)
    max_attempts: int | None = Field(default=None, ge=1, le=10)
    retry_delay_s: float | None = Field(default=None, ge=0)
    retry: CallRetry | None = None  # voice: call again later by outcome
    missed_call_sms: bool = False  # voice: one "we tried to call you" SMS after a missed call

    @model_validator(mode="after")
    def _backup_is_phone_or_email(self) -> Step:
        if self.target == "backup_contacts" and self.channel not in ("voice", "sms", "email"):
            raise ValueError("backup_contacts can be reached by voice, sms or email only")
        if (self.retry is not None or self.missed_call_sms) and self.channel != "voice":
            raise ValueError("retry by outcome and missed_call_sms are options of voice steps")
        return self


class Plan(_Frozen):
    category: Category
    steps: list[Step] = Field(min_length=1)
    # Only the addresses the request's `contacts` give, no profile's; a step without one is
    # left out rather than suppressed (replies to an inquiry go to its sender, on its channel).
    request_contacts_only: bool = False


def _default_timeouts() -> dict[Channel, float]:
    return {"sms": 120.0, "email": 300.0, "push": 60.0, "voice": 90.0}


class Defaults(_Frozen):
    timeout_s: dict[Channel, float] = Field(default_factory=_default_timeouts)
    max_attempts: int = Field(default=3, ge=1, le=10)
    retry_delay_s: float = Field(default=1.0, ge=0)


class PlanBook(_Frozen):
    defaults: Defaults = Field(default_factory=Defaults)
    plans: dict[str, Plan] = Field(min_length=1)

    def get(self, type_: str) -> Plan | None:
        return self.plans.get(type_)

    def timeout_s(self, step: Step) -> float:
        return step.timeout_s or self.defaults.timeout_s.get(step.channel, 120.0)

    def max_attempts(self, step: Step) -> int:
        return step.max_attempts or self.defaults.max_attempts

    def retry_delay_s(self, step: Step) -> float:
        return self.defaults.retry_delay_s if step.retry_delay_s is None else step.retry_delay_s


def load_plans(path: Path | None = None) -> PlanBook:
    """Read and validate a plan file; raise ConfigError naming the file and the bad fields."""
    path = path or SHIPPED_PLANS
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read routing plans {path}: {exc}") from exc
    try:
        return PlanBook.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid routing plans {path}: {describe_validation_error(exc)}"
        ) from exc
