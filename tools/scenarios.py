"""The demo's scripted borrower events and what must come of them, as data.

Every sandbox address in docs/CONTRACT.md is covered. The expected results assume the
shipped routing plans (services/router/plans.yaml):

    repayment_due          push → sms → email
    overdue_notice         voice → sms → email
    loan_approved          push → email → sms
    verification_callback  voice (borrower) → voice (backup contacts, employer first) → sms
    otp                    sms → voice

A `failed` attempt is retried (3 attempts in all) before the next step; a step with no
address is `suppressed` and skipped. Final status: `delivered` if any attempt delivered,
`suppressed` if every step was, `expired` once expires_at has passed, else `failed`.

`expected_status` is what decides pass/fail; `expected_path` (consecutive repeats of the
same channel and outcome folded into `times`) says which way it should get there.

Ids are made unique per run (`run_id`), so the demo can run again against the same stack
and every record it reads back can be told apart from earlier runs.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from shared.contract.models import Channel, FinalStatus, Outcome

PHONE_PREFIX = "+86138000000"  # + two digits: the sandbox steers by the last four


def phone(nn: int) -> str:
    """`phone(1)` → `+8613800000001` (sandbox: voice busy, SMS delivered)."""
    return f"{PHONE_PREFIX}{nn:02d}"


@dataclass(frozen=True)
class Hop:
    """One expected step of the path: `times` attempts on `channel` ending in `outcome`."""

    channel: Channel
    outcome: Outcome
    times: int = 1

    def __str__(self) -> str:
        return f"{self.channel} {self.outcome}" + (f" ×{self.times}" if self.times > 1 else "")


def fold(attempts: Sequence[tuple[str, str]]) -> list[tuple[str, str, int]]:
    """Fold consecutive attempts with the same channel and outcome: [(channel, outcome, n)]."""
    out: list[tuple[str, str, int]] = []
    for channel, outcome in attempts:
        if out and out[-1][:2] == (channel, outcome):
            out[-1] = (channel, outcome, out[-1][2] + 1)
        else:
            out.append((channel, outcome, 1))
    return out


def path_text(attempts: Sequence[tuple[str, str]]) -> str:
    """`voice busy → sms delivered`; `sms failed ×3 → voice delivered`; `(no attempt)`."""
    hops = [f"{c} {o}" + (f" ×{n}" if n > 1 else "") for c, o, n in fold(attempts)]
    return " → ".join(hops) if hops else "(no attempt)"


@dataclass(frozen=True)
class Scenario:
    """One notification.requested/v1 event, its customer's profile, and the expected end."""

    name: str  # short and unique: the notification id is f"demo-{run_id}-{name}"
    title: str
    type: str
    expected_status: FinalStatus
    expected_path: tuple[Hop, ...]
    profile: Mapping[str, Any] | None = None  # profile fields beyond schema / customer_id
    contacts: Mapping[str, Any] | None = None  # the event's `contacts` override
    data: Mapping[str, Any] = field(default_factory=dict)
    expires_in_s: float | None = None  # negative: expires_at already passed
    publish_times: int = 1  # >1: the very same event (same id) sent again
    # contact-rule scenarios: the path must match too, and these decisions (prefixes of the
    # comms.record/v1 `decision`) must be in the audit; `group`: customer shared by the group
    strict_path: bool = False
    expected_decisions: tuple[str, ...] = ()
    group: str | None = None

    def notification_id(self, run_id: str) -> str:
        return f"demo-{run_id}-{self.name}"

    def customer_id(self, run_id: str) -> str:
        return f"cust-{run_id}-{self.group or self.name}"

    def expected_path_text(self) -> str:
        return " → ".join(str(h) for h in self.expected_path) or "(no attempt)"

    def path_matches(self, attempts: Sequence[tuple[str, str]]) -> bool:
        return fold(attempts) == [(h.channel, h.outcome, h.times) for h in self.expected_path]


@dataclass(frozen=True)
class InvalidScenario:
    """A value the router must refuse: it lands on the dead-letter topic, nothing else."""

    name: str
    title: str
    expected_error: str | None  # the dead letter's `error` header; None: any

    def key(self, run_id: str) -> str:
        return f"cust-{run_id}-{self.name}"

    def notification_id(self, run_id: str) -> str:
        return f"demo-{run_id}-{self.name}"


LOAN = {
    "loan_id": "LN-2026-0042",
    "amount_due": "1280.00",
    "currency": "CNY",
    "due_date": "2026-12-01",
}
APPROVED = {"loan_id": "LN-2026-0077", "amount": "20000.00", "currency": "CNY"}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "overdue-busy",
        "overdue notice, voice busy (…0001)",
        "overdue_notice",
        "delivered",
        (Hop("voice", "busy"), Hop("sms", "delivered")),
        profile={"name": "Zhang Wei", "phone": phone(1)},
        data=LOAN,
    ),
    Scenario(
        "overdue-no-answer",
        "overdue notice, voice no answer (…0002)",
        "overdue_notice",
        "delivered",
        (Hop("voice", "no_answer"), Hop("sms", "delivered")),
        profile={"name": "Wang Fang", "phone": phone(2)},
        data=LOAN,
    ),
    Scenario(
        "overdue-rejected-email",
        "overdue notice, invalid number (…0003), has email",
        "overdue_notice",
        "delivered",
        (Hop("voice", "rejected"), Hop("sms", "rejected"), Hop("email", "delivered")),
        profile={"name": "Li Na", "phone": phone(3), "email": "li.na@example.com"},
        data=LOAN,
    ),
    Scenario(
        "overdue-rejected-no-email",
        "overdue notice, invalid number (…0003), no email",
        "overdue_notice",
        "failed",
        (Hop("voice", "rejected"), Hop("sms", "rejected"), Hop("email", "suppressed")),
        profile={"name": "Liu Yang", "phone": phone(3)},
        data=LOAN,
    ),
    Scenario(
        "otp-sms-failing",
        "one-time password, SMS failing (…0004)",
        "otp",
        "delivered",
        (Hop("sms", "failed", 3), Hop("voice", "delivered")),
        profile={"name": "Chen Jing", "phone": phone(4)},
        data={"code": "604213"},
    ),
    Scenario(
        "otp-sms-failover",
        "one-time password (…0008): with local providers the SMSC refuses it, Twilio sends it",
        "otp",
        "delivered",
        (Hop("sms", "delivered"),),
        profile={"name": "Lin Feng", "phone": phone(8)},
        data={"code": "318507"},
        strict_path=True,
    ),
    Scenario(
        "overdue-busy-twice",
        "overdue notice, voice busy twice then answers (…0005)",
        "overdue_notice",
        "delivered",
        (Hop("voice", "busy"), Hop("sms", "delivered")),
        profile={"name": "Yang Lei", "phone": phone(5)},
        data=LOAN,
    ),
    Scenario(
        "overdue-voicemail",
        "overdue notice, voicemail (…0006)",
        "overdue_notice",
        "delivered",
        (Hop("voice", "voicemail"), Hop("sms", "delivered")),
        profile={"name": "Zhao Min", "phone": phone(6)},
        data=LOAN,
    ),
    Scenario(
        "repayment-all-bad",
        "repayment due, invalid push token, invalid number, bouncing email",
        "repayment_due",
        "failed",
        (Hop("push", "rejected"), Hop("sms", "rejected"), Hop("email", "bounced")),
        profile={
            "name": "Huang Tao",
            "phone": phone(3),
            "email": "bounce@example.com",
            "push_tokens": ["invalid-device-token-7f3a"],
        },
        data=LOAN,
    ),
    Scenario(
        "approved-push",
        "loan approved, push delivered",
        "loan_approved",
        "delivered",
        (Hop("push", "delivered"),),
        profile={
            "name": "Zhou Xin",
            "phone": phone(10),
            "email": "zhou.xin@example.com",
            "push_tokens": ["fcm-device-token-91b2c4"],
        },
        data=APPROVED,
    ),
    Scenario(
        "verification-backups",
        "verification callback: borrower busy ×3, employer no answer, spouse voicemail",
        "verification_callback",
        "delivered",
        (
            Hop("voice", "busy"),
            Hop("sms", "delivered"),  # "we tried to call you", after the first missed call
            Hop("voice", "busy", 2),
            Hop("voice", "no_answer"),
            Hop("voice", "voicemail"),
            Hop("sms", "delivered"),
        ),
        profile={
            "name": "Wu Hao",
            "phone": phone(1),
            "backup_contacts": [
                {"name": "Wu Li", "relation": "spouse", "phone": phone(6)},
                {"name": "Acme HR", "relation": "employer", "phone": phone(2)},
            ],
        },
        data={"loan_id": "LN-2026-0090"},
    ),
    Scenario(
        "repayment-contacts-override",
        "repayment due, no phone or push in the profile, email given in `contacts`",
        "repayment_due",
        "delivered",
        (Hop("push", "suppressed"), Hop("sms", "suppressed"), Hop("email", "delivered")),
        profile={"name": "Xu Ming"},
        contacts={"email": "xu.ming@example.com"},
        data=LOAN,
    ),
    Scenario(
        "no-address",
        "repayment due, customer without any address",
        "repayment_due",
        "suppressed",
        (Hop("push", "suppressed"), Hop("sms", "suppressed"), Hop("email", "suppressed")),
        profile={"name": "Sun Li"},
        data=LOAN,
    ),
    Scenario(
        "expired",
        "overdue notice whose expires_at has passed",
        "overdue_notice",
        "expired",
        (),
        profile={"name": "Ma Jun", "phone": phone(10)},
        data=LOAN,
        expires_in_s=-3600,
    ),
    Scenario(
        "duplicate",
        "repayment due, the same event id published twice",
        "repayment_due",
        "delivered",
        (Hop("push", "delivered"),),
        profile={"name": "Guo Qiang", "push_tokens": ["apns-device-token-5d6e7f"]},
        data=LOAN,
        publish_times=2,
    ),
)

# The demo's simulated clock starts at 22:30 in Shanghai on a Tuesday (tools/demo.py): these
# borrowers live there, so the night and the morning's rules show; the scenarios above live
# where it is daytime then.
DEMO_START = datetime(2026, 11, 24, 22, 30, tzinfo=ZoneInfo("Asia/Shanghai"))
SHANGHAI = {"timezone": "Asia/Shanghai"}
RULES: tuple[Scenario, ...] = (
    Scenario(
        "night-collection",
        "overdue notice at 22:30 local: deferred, called at 08:00",
        "overdue_notice",
        "delivered",
        (Hop("voice", "delivered"),),
        profile={"name": "Deng Hui", "phone": phone(91), **SHANGHAI},
        data=LOAN,
        strict_path=True,
        expected_decisions=("deferred: contact_window until 2026-11-25T08:00:00+08:00",),
    ),
    Scenario(
        "night-otp",
        "one-time password at 22:30 local: sent at once",
        "otp",
        "delivered",
        (Hop("sms", "delivered"),),
        profile={"name": "Deng Hui", "phone": phone(92), **SHANGHAI},
        data={"code": "583920"},
        strict_path=True,
    ),
    Scenario(
        "callback-busy-twice",
        "verification call-back (…0005): busy, busy, answered",
        "verification_callback",
        "delivered",
        (
            Hop("voice", "busy"),
            Hop("sms", "delivered"),
            Hop("voice", "busy"),
            Hop("voice", "delivered"),
        ),
        profile={"name": "Qian Yu", "phone": phone(5), **SHANGHAI},
        data={"loan_id": "LN-2026-0101"},
        expected_decisions=(
            "deferred: contact_window until 2026-11-25T08:00:00+08:00",
            "retry: call-back 1 of 2 after busy",
            "retry: call-back 2 of 2 after busy",
        ),
    ),
    Scenario(
        "employer-slot",
        "verification call-back: borrower busy ×3 from 08:00, employer at 09:00",
        "verification_callback",
        "delivered",
        (
            Hop("voice", "busy"),
            Hop("sms", "delivered"),
            Hop("voice", "busy", 2),
            Hop("voice", "delivered"),
        ),
        profile={
            "name": "Feng Lin",
            "phone": phone(1),
            "backup_contacts": [{"name": "Acme HR", "relation": "employer", "phone": phone(93)}],
            **SHANGHAI,
        },
        data={"loan_id": "LN-2026-0102"},
        expected_decisions=(
            "deferred: contact_window until 2026-11-25T08:00:00+08:00",
            "deferred: business_hours until 2026-11-25T09:00:00+08:00",
        ),
    ),
    Scenario(
        "cap-first",
        "two overdue notices on one debt: the first is answered at 08:00 …",
        "overdue_notice",
        "delivered",
        (Hop("voice", "delivered"),),
        profile={"name": "Tang Jie", "phone": phone(94), **SHANGHAI},
        data={**LOAN, "loan_id": "LN-2026-0103"},
        strict_path=True,
        group="cap",
    ),
    Scenario(
        "cap-second",
        "… so the second may not call for 7 days: SMS instead",
        "overdue_notice",
        "delivered",
        (Hop("voice", "suppressed"), Hop("sms", "delivered")),
        data={**LOAN, "loan_id": "LN-2026-0103"},
        strict_path=True,
        expected_decisions=("suppressed: voice_debt_after_answered",),
        group="cap",
    ),
)

INVALID: tuple[InvalidScenario, ...] = (
    InvalidScenario("bad-json", "malformed JSON", "malformed_json"),
    InvalidScenario("unknown-type", "a type no routing plan knows", "unknown_type"),
    InvalidScenario("schema-v2", "schema notification.requested/v2", "unknown_schema_version"),
)


def new_run_id() -> str:
    return secrets.token_hex(3)


def _ts(t: datetime) -> str:
    return t.isoformat(timespec="seconds")


def daytime_timezone(now: datetime) -> str:
    """An IANA zone (Etc/GMT±N) where it is about 13:00 now, so no calling window or quiet
    hour of the router's can defer the demo's calls, whenever it runs."""
    offset = (13 - now.astimezone(UTC).hour + 12) % 24 - 12  # -12 … +11 hours from UTC
    if offset == 0:
        return "Etc/UTC"
    # POSIX-style names: Etc/GMT-8 is UTC+8.
    return f"Etc/GMT{-offset:+d}"


def build_profile(s: Scenario, run_id: str, now: datetime) -> dict[str, Any]:
    """The customer.profile/v1 value for the scenario's customer."""
    return {
        "schema": "customer.profile/v1",
        "customer_id": s.customer_id(run_id),
        "timezone": daytime_timezone(now),
        "locale": "zh-CN",
        **(s.profile or {}),
        "updated_at": _ts(now),
    }


def build_event(s: Scenario, run_id: str, now: datetime) -> dict[str, Any]:
    """The notification.requested/v1 value."""
    event: dict[str, Any] = {
        "schema": "notification.requested/v1",
        "id": s.notification_id(run_id),
        "type": s.type,
        "customer_id": s.customer_id(run_id),
        "occurred_at": _ts(now),
        "data": dict(s.data),
    }
    if s.contacts is not None:
        event["contacts"] = dict(s.contacts)
    if s.expires_in_s is not None:
        event["expires_at"] = _ts(now + timedelta(seconds=s.expires_in_s))
    return event


def build_invalid(s: InvalidScenario, run_id: str, now: datetime) -> bytes:
    """The raw value of an invalid event."""
    base = {
        "schema": "notification.requested/v1",
        "id": s.notification_id(run_id),
        "type": "repayment_due",
        "customer_id": s.key(run_id),
        "occurred_at": _ts(now),
        "data": LOAN,
    }
    if s.name == "bad-json":
        return orjson.dumps(base)[:-20] + b',"data": {oops'
    if s.name == "unknown-type":
        return orjson.dumps({**base, "type": "birthday_greeting"})
    if s.name == "schema-v2":
        return orjson.dumps({**base, "schema": "notification.requested/v2"})
    raise ValueError(f"no payload for invalid scenario {s.name!r}")
