"""Contact policy: the step between a plan's next leg and its dispatch.

`ContactPolicy.decide` answers allow, suppress (with a reason, the plan moves on) or defer
(until a time; the scheduler resumes the leg then). The spine enforces opt-out and revoked
consent; calling windows, quiet hours and frequency caps plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from services.router.state import Leg, NotificationState


@dataclass(frozen=True)
class Verdict:
    action: Literal["allow", "suppress", "defer"]
    reason: str = ""
    until: datetime | None = None


ALLOW = Verdict("allow")


class ContactPolicy:
    """Opt-out and consent. `urgent` priority never bypasses either."""

    def decide(self, state: NotificationState, leg: Leg, now: datetime) -> Verdict:
        if leg.address is None:
            return Verdict("suppress", "no_address")
        if leg.kind != "backup_contact":
            if leg.channel in state.policy.opted_out_channels:
                return Verdict("suppress", "opted_out")
            if leg.channel in state.policy.revoked_channels:
                return Verdict("suppress", "no_consent")
        return ALLOW
