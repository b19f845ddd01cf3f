"""Third-party contact: some categories (`collection`) never reach anyone but the borrower —
their backup-contact steps are suppressed."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from services.router.policy.base import Contact, RuleConfig, Verdict
from shared.contract.models import Category


def _collection() -> list[Category]:
    return ["collection"]


class ThirdPartyConfig(RuleConfig):
    forbidden_categories: list[Category] = Field(default_factory=_collection)


class ThirdParty:
    name = "third_party"

    def __init__(self, config: ThirdPartyConfig) -> None:
        self.config = config

    def check(self, c: Contact, now: datetime) -> Verdict | None:
        if c.third_party and c.category in self.config.forbidden_categories:
            return Verdict("suppress", self.name)
        return None
