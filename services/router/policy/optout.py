"""Opt-out and consent: a channel the borrower opted out of (profile `opted_out_channels`,
an opt-out keyword) or whose consent is revoked is suppressed for every category except the
exempt ones (`transactional`). No priority bypasses it. A step with no address is
suppressed too (`no_address`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from services.router.policy.base import Contact, RuleConfig, Verdict
from shared.contract.models import Category


def _transactional() -> list[Category]:
    return ["transactional"]


class OptOutConfig(RuleConfig):
    exempt_categories: list[Category] = Field(default_factory=_transactional)


class NoAddress:
    name = "no_address"

    def check(self, c: Contact, now: datetime) -> Verdict | None:
        return Verdict("suppress", self.name) if c.address is None else None


class OptOut:
    name = "opted_out"

    def __init__(self, config: OptOutConfig) -> None:
        self.config = config

    def check(self, c: Contact, now: datetime) -> Verdict | None:
        if c.third_party or c.category in self.config.exempt_categories:
            return None
        if c.channel in c.opted_out:
            return Verdict("suppress", "opted_out")
        if c.channel in c.revoked:
            return Verdict("suppress", "no_consent")
        return None
