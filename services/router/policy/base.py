"""What every contact rule sees and answers.

A rule is a small class with a typed config. *Gates* answer "suppress, with my name" or
nothing (opt-out, third party, frequency caps); *windows* say when contact is allowed
(contact window, quiet hours, business hours) and the policy defers to the first instant at
which every applicable window is open. `ContactPolicy` (services/router/policy/__init__.py)
runs them in order: gates that never change with time, then windows, then frequency caps.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import msgspec
from pydantic import BaseModel, ConfigDict

from services.router.ledger import LedgerView
from shared.contract.models import Category, Channel, Priority

Action = Literal["allow", "suppress", "defer"]
LegKind = Literal["borrower", "alt_phone", "backup_contact", "notice"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    rule: str = ""
    until: datetime | None = None
    read_ledger: bool = False  # the verdict depends on the ledger (a cap was evaluated)

    def decision(self, tz: ZoneInfo | None = None) -> str:
        """The contract's `decision` text: `<verdict>: <rule> [until <RFC 3339>]`."""
        verb = {"suppress": "suppressed", "defer": "deferred", "allow": "allowed"}[self.action]
        if self.until is None:
            return f"{verb}: {self.rule}"
        until = self.until.astimezone(tz) if tz is not None else self.until
        return f"{verb}: {self.rule} until {until.isoformat(timespec='seconds')}"


ALLOW = Verdict("allow")
ALLOW_READ = Verdict("allow", read_ledger=True)  # allowed after the caps read the ledger


class Contact(msgspec.Struct, frozen=True, kw_only=True):
    """One contact the plan wants to make, with what the rules need to judge it.

    A frozen msgspec Struct rather than a frozen dataclass: one is built for every decision
    (a frozen dataclass sets each field through `object.__setattr__`, several µs)."""

    customer_id: str
    category: Category
    priority: Priority
    channel: Channel
    kind: LegKind
    relation: str | None
    address: str | None
    data: dict[str, Any]
    tz: ZoneInfo
    country: str
    quiet_hours: Sequence[tuple[str, str]]
    opted_out: Collection[Channel]
    revoked: Collection[Channel]
    ledger: LedgerView | None
    hold_until: float | None = None  # a hardship hold (epoch s) while an agent is due

    @property
    def debt(self) -> str:
        """The debt a contact is about: `data.loan_id`, or `-` when the event has none."""
        loan = self.data.get("loan_id")
        return str(loan) if loan not in (None, "") else "-"

    @property
    def third_party(self) -> bool:
        return self.kind == "backup_contact"


class Gate(Protocol):
    """A rule that may refuse a contact outright."""

    name: str

    def check(self, c: Contact, now: datetime) -> Verdict | None: ...


class Window(Protocol):
    """A rule that allows contact only at some times."""

    name: str

    def applies(self, c: Contact) -> bool: ...

    def next_open(self, c: Contact, t: datetime) -> datetime | None:
        """The first instant ≥ t at which the window is open; None: never (within a year)."""
        ...


class RuleConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_s(value: str | float | int) -> float:
    """`15m`, `2h`, `7d`, `30s` or a number of seconds → seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration must not be negative")
        return float(value)
    m = _DURATION.match(value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a duration like 30s, 15m, 2h or 7d")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def horizon(t: datetime) -> datetime:
    """How far a window looks ahead for its next opening."""
    return t + timedelta(days=400)
