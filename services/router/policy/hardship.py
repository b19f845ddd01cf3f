"""Hardship hold: while a borrower's `hardship` inquiry awaits an agent, contacts of the held
categories (`collection`) wait. The inquiries desk sets the hold (until the inquiry is
resolved, at most `max_hold`) in the borrower's controls (services/router/controls.py); a
resolution lifts it and wakes the held notifications."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field, field_validator

from services.router.policy.base import Contact, RuleConfig, parse_duration_s
from shared.contract.models import Category


def _collection() -> list[Category]:
    return ["collection"]


class HardshipHoldConfig(RuleConfig):
    enabled: bool = True
    categories: list[Category] = Field(default_factory=_collection)
    max_hold: str = "7d"  # a hold no agent resolved ends after this (from the inquiry)

    @field_validator("max_hold")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration_s(v)
        return v

    @property
    def max_hold_s(self) -> float:
        return parse_duration_s(self.max_hold)


class HardshipHold:
    name = "hardship_hold"

    def __init__(self, config: HardshipHoldConfig) -> None:
        self.config = config

    def applies(self, c: Contact) -> bool:
        return (
            self.config.enabled
            and c.hold_until is not None
            and c.category in self.config.categories
        )

    def next_open(self, c: Contact, t: datetime) -> datetime | None:
        assert c.hold_until is not None
        if t.timestamp() >= c.hold_until:
            return t
        return datetime.fromtimestamp(c.hold_until, UTC)
