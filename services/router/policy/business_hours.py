"""Business hours for third parties: a backup contact whose relation is listed (`employer`)
is called only on the borrower's country's working days (public holidays skipped, official
make-up working days such as China's 调休 counted) inside the listed local-time slots."""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache

import holidays
from pydantic import Field

from services.router.policy.base import Contact, RuleConfig
from services.router.policy.localtime import interval
from services.router.policy.localtime import next_open as next_in
from services.router.policy.window import Span


class BusinessHoursConfig(RuleConfig):
    relations: list[str] = Field(default_factory=lambda: ["employer"])
    slots: list[Span] = Field(
        default_factory=lambda: [Span(start="09:00", end="12:00"), Span(start="13:30", end="17:30")]
    )
    holidays: bool = True  # skip the country's public holidays, count its make-up workdays


@lru_cache(maxsize=64)
def _calendar(country: str) -> holidays.HolidayBase | None:
    try:
        return holidays.country_holidays(country)
    except NotImplementedError:
        return None


def is_working_day(country: str, day: date, use_holidays: bool = True) -> bool:
    """Monday–Friday, or per the country's calendar (holidays and make-up working days)."""
    cal = _calendar(country) if use_holidays else None
    if cal is None:
        return day.weekday() < 5
    return bool(cal.is_working_day(day))


class BusinessHours:
    name = "business_hours"

    def __init__(self, config: BusinessHoursConfig) -> None:
        self.config = config
        self._spans = [m for s in config.slots for m in interval(s.start, s.end)]

    def applies(self, c: Contact) -> bool:
        return c.third_party and (c.relation or "") in self.config.relations

    def next_open(self, c: Contact, t: datetime) -> datetime | None:
        return next_in(
            t, c.tz, self._spans, lambda d: is_working_day(c.country, d, self.config.holidays)
        )
