"""Frequency caps: rolling windows over the borrower's ledger (services/router/ledger.py).

Each cap names itself (the rule in `suppressed: <rule>`), the channel(s) and categories it
watches, whether it counts per borrower or per debt (the borrower and `data.loan_id`), what
it counts (`attempts`: calls placed; `answered`: calls answered, counting calls still in
flight as possibly answered) and its window (`7d`, `24h`, ... or `local_day`: the borrower's
local calendar day). A contact is allowed while the count is below `limit`; `limit: 1` with
`answered` over `7d` means "none in the 7 days after an answered call".
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from services.router.policy.base import Contact, LegKind, RuleConfig, Verdict, parse_duration_s
from services.router.policy.localtime import local_day_bounds_s
from shared.contract.models import Category, Channel, Priority


def _own_phones() -> list[LegKind]:
    return ["borrower", "alt_phone"]


class CapConfig(RuleConfig):
    rule: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    channels: list[Channel] = Field(min_length=1)
    categories: list[Category] = Field(min_length=1)
    per: Literal["borrower", "debt"] = "borrower"
    counts: Literal["attempts", "answered"] = "attempts"
    limit: int = Field(ge=1)
    window: str = "7d"
    kinds: list[LegKind] = Field(default_factory=_own_phones)
    bypass_priorities: list[Priority] = Field(default_factory=list)

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        if v != "local_day":
            parse_duration_s(v)
        return v

    def window_s(self) -> float:
        return 86_400.0 if self.window == "local_day" else parse_duration_s(self.window)


class FrequencyConfig(RuleConfig):
    caps: list[CapConfig] = Field(default_factory=list)
    inflight_ttl: str = "1h"  # an attempt with no outcome stops counting as in flight after

    @field_validator("inflight_ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        parse_duration_s(v)
        return v


class FrequencyCaps:
    name = "frequency"

    def __init__(self, config: FrequencyConfig) -> None:
        self.config = config
        self.inflight_ttl_s = parse_duration_s(config.inflight_ttl)
        self._window_s = {cap.rule: cap.window_s() for cap in config.caps}
        self.channels: frozenset[Channel] = frozenset(
            ch for cap in config.caps for ch in cap.channels
        )
        # (channel, category, kind, priority) → the caps that apply (a handful of keys)
        self._applicable: dict[tuple[str, str, str, str], list[CapConfig]] = {}
        # How far back the ledger must be read and kept.
        self.horizon_s = max(
            [cap.window_s() for cap in config.caps] + [self.inflight_ttl_s], default=0.0
        )

    def applicable(self, c: Contact) -> list[CapConfig]:
        key = (c.channel, c.category, c.kind, c.priority)
        caps = self._applicable.get(key)
        if caps is None:
            caps = self._applicable[key] = [
                cap
                for cap in self.config.caps
                if c.channel in cap.channels
                and c.category in cap.categories
                and c.kind in cap.kinds
                and c.priority not in cap.bypass_priorities
            ]
        return caps

    def check(
        self, c: Contact, now: datetime, caps: list[CapConfig] | None = None
    ) -> Verdict | None:
        """The first cap `c` would exceed (`caps`: the applicable ones, if known)."""
        caps = self.applicable(c) if caps is None else caps
        if not caps:
            return None
        ledger = c.ledger
        if ledger is None:  # the engine reads the ledger for every contact a cap may watch
            raise RuntimeError("frequency caps need the customer's ledger")
        if not ledger.entries:
            return None  # nothing counted: every limit is at least 1
        now_s = now.timestamp()
        day: tuple[float, float] | None = None
        for cap in caps:
            debt = c.debt if cap.per == "debt" else None
            if cap.window == "local_day":
                if day is None:
                    day = local_day_bounds_s(now, c.tz)
                since_s, until_s = day
            else:
                since_s, until_s = now_s - self._window_s[cap.rule], float("inf")
            if cap.counts == "attempts":
                n = ledger.count(c.channel, "attempt", debt, since_s, until_s)
            else:
                n = ledger.count(c.channel, "answered", debt, since_s, until_s)
                n += ledger.count(c.channel, "inflight", debt, now_s - self.inflight_ttl_s)
            if n >= cap.limit:
                return Verdict("suppress", cap.rule)
        return None
