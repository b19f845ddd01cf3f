"""Quiet hours: the profile's `quiet_hours` (local times the borrower asked not to be
contacted in) are outside every window, except for the exempt categories (`transactional`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import Field

from services.router.policy.base import Contact, RuleConfig
from services.router.policy.localtime import at_local, interval
from shared.contract.models import Category


def _transactional() -> list[Category]:
    return ["transactional"]


class QuietHoursConfig(RuleConfig):
    enabled: bool = True
    exempt_categories: list[Category] = Field(default_factory=_transactional)


class QuietHours:
    name = "quiet_hours"

    def __init__(self, config: QuietHoursConfig) -> None:
        self.config = config

    def applies(self, c: Contact) -> bool:
        return (
            self.config.enabled
            and bool(c.quiet_hours)
            and c.category not in self.config.exempt_categories
            and not c.third_party  # the borrower's own wish covers the borrower
        )

    def next_open(self, c: Contact, t: datetime) -> datetime | None:
        spans = [m for start, end in c.quiet_hours for m in interval(start, end)]
        if any(s == 0 and e == 1440 for s, e in spans):
            return None  # quiet all day: never
        for _ in range(2 * len(spans) + 2):  # leave every quiet span t falls in
            moved = False
            local_day = t.astimezone(c.tz).date()
            for day in (local_day - timedelta(days=1), local_day):
                for s, e in spans:
                    start, stop = at_local(day, s, c.tz), at_local(day, e, c.tz)
                    if start <= t < stop:
                        t, moved = stop, True
            if not moved:
                return t
        return t
