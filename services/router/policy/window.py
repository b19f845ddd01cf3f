"""Contact windows: categories (optionally per channel) may be contacted only inside daily
local-time windows; outside, the step is deferred until the window opens."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, field_validator

from services.router.policy.base import Contact, RuleConfig
from services.router.policy.localtime import Minutes, interval
from services.router.policy.localtime import next_open as next_in
from shared.contract.models import Category, Channel


class Span(RuleConfig):
    start: str = Field(pattern=r"^([01]\d|2[0-4]):[0-5]\d$")
    end: str = Field(pattern=r"^([01]\d|2[0-4]):[0-5]\d$")


class WindowConfig(RuleConfig):
    """`categories: {collection: [{start: "08:00", end: "21:00"}]}`; a category not listed
    may be contacted at any time. `channels` overrides per category and channel."""

    categories: dict[Category, list[Span]] = Field(default_factory=dict)
    channels: dict[Category, dict[Channel, list[Span]]] = Field(default_factory=dict)

    @field_validator("categories")
    @classmethod
    def _not_empty(cls, v: dict[Category, list[Span]]) -> dict[Category, list[Span]]:
        for category, spans in v.items():
            if not spans:
                raise ValueError(f"{category}: list at least one window, or leave it out")
        return v


class ContactWindow:
    name = "contact_window"

    def __init__(self, config: WindowConfig) -> None:
        self.config = config
        # parsed once: (category, channel or None) → daily spans in minutes
        self._parsed: dict[tuple[str, str | None], list[Minutes]] = {
            (category, None): [m for s in spans for m in interval(s.start, s.end)]
            for category, spans in config.categories.items()
        }
        for category, by_channel in config.channels.items():
            for channel, spans in by_channel.items():
                self._parsed[(category, channel)] = [
                    m for s in spans for m in interval(s.start, s.end)
                ]

    def _spans(self, c: Contact) -> list[Minutes] | None:
        spans = self._parsed.get((c.category, c.channel))
        return spans if spans is not None else self._parsed.get((c.category, None))

    def applies(self, c: Contact) -> bool:
        return self._spans(c) is not None

    def next_open(self, c: Contact, t: datetime) -> datetime | None:
        spans = self._spans(c)
        return t if spans is None else next_in(t, c.tz, spans)
