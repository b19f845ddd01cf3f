"""Contact policy: the step between a plan's next contact and its dispatch.

`ContactPolicy.decide` answers allow, suppress (naming the rule; the plan moves on) or defer
(until the first instant every window allows; the durable scheduler resumes the step then).
Order: gates that time does not change (no address, opt-out/consent, third party), then the
windows (contact window, quiet hours, business hours), then the frequency caps — so a capped
call outside its window waits for the window and is judged against the ledger of that moment.

One module per rule (window, quiet_hours, business_hours, hardship, third_party, frequency,
optout),
each a small class with a typed config; a new rule is its module, its config field in
`PolicyConfig` and its test.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from services.router.policy.base import ALLOW, ALLOW_READ, Contact, Gate, Verdict, Window
from services.router.policy.business_hours import BusinessHours
from services.router.policy.config import PolicyConfig, load_policy_config, preset_path
from services.router.policy.frequency import FrequencyCaps
from services.router.policy.hardship import HardshipHold
from services.router.policy.optout import NoAddress, OptOut
from services.router.policy.quiet_hours import QuietHours
from services.router.policy.third_party import ThirdParty
from services.router.policy.window import ContactWindow
from shared.contract.models import Category, Channel

__all__ = [
    "ALLOW",
    "Contact",
    "ContactPolicy",
    "PolicyConfig",
    "Verdict",
    "load_policy",
]

MAX_WINDOW_ROUNDS = 16
WINDOWS_CACHED = 4096  # window answers kept for the current `now` (per contact kind)


class ContactPolicy:
    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        c = self.config
        self.gates: list[Gate] = [NoAddress(), OptOut(c.opt_out), ThirdParty(c.third_party)]
        self.windows: list[Window] = [
            ContactWindow(c.windows),
            QuietHours(c.quiet_hours),
            BusinessHours(c.business_hours),
            HardshipHold(c.hardship_hold),
        ]
        self.caps = FrequencyCaps(c.frequency)
        # `_windows` answers for the last `now` seen: the same instant for a whole batch
        self._windows_now: datetime | None = None
        self._windows_seen: dict[tuple[object, ...], tuple[datetime | None, str | None]] = {}

    @property
    def ledger_channels(self) -> frozenset[Channel]:
        """Channels whose contacts the ledger records (some cap watches them)."""
        return self.caps.channels

    def needs_ledger(self, category: Category, channels: Iterable[Channel]) -> bool:
        """Whether deciding for a notification of `category` over `channels` may read the
        ledger (the engine reads it first for exactly those)."""
        return any(
            category in cap.categories and ch in cap.channels
            for cap in self.config.frequency.caps
            for ch in channels
        )

    def decide(self, c: Contact, now: datetime) -> Verdict:
        for gate in self.gates:
            verdict = gate.check(c, now)
            if verdict is not None:
                return verdict
        # The windows depend on these only (tests/test_policy_rules.py checks the cache
        # against the rules), and a batch judges thousands of contacts at one `now`.
        key = (
            c.category,
            c.channel,
            c.kind,
            c.relation,
            c.tz,
            c.country,
            tuple(tuple(q) for q in c.quiet_hours) if c.quiet_hours else (),
            c.hold_until,
        )
        if now != self._windows_now:
            self._windows_now, self._windows_seen = now, {}
        found = self._windows_seen.get(key)
        if found is None:
            if len(self._windows_seen) >= WINDOWS_CACHED:
                self._windows_seen.clear()
            found = self._windows_seen[key] = self._windows(c, now)
        until, rule = found
        if rule is not None:
            return Verdict("suppress" if until is None else "defer", rule, until)
        caps = self.caps.applicable(c)
        if not caps:
            return ALLOW
        verdict = self.caps.check(c, now, caps)
        if verdict is None:
            return ALLOW_READ
        return Verdict(verdict.action, verdict.rule, verdict.until, read_ledger=True)

    def _windows(self, c: Contact, now: datetime) -> tuple[datetime | None, str | None]:
        """(the instant every applicable window is open, the first rule that closed it);
        (now, None) when all are open now; (None, rule) when a window never opens."""
        windows = [w for w in self.windows if w.applies(c)]
        t, first = now, None
        for _ in range(MAX_WINDOW_ROUNDS):
            moved = False
            for w in windows:
                opens = w.next_open(c, t)
                if opens is None:
                    return None, w.name
                if opens > t:
                    t, moved = opens, True
                    first = first or w.name
            if not moved:
                return (t, first) if first else (now, None)
        return None, first or "contact_window"


def load_policy(preset: str = "cn", path: Path | None = None) -> ContactPolicy:
    """The contact policy of `path` if given, else of the shipped `preset`."""
    return ContactPolicy(load_policy_config(path or preset_path(preset)))
