"""Property tests of the contact rules over random event streams (hypothesis).

A `RuleBasedStateMachine` drives the router's pure state machine with the shipped `cn` rules:
notifications of every shipped type for borrowers in random time zones (some without one),
with random opt-outs; random outcomes for whatever is in flight; a clock that jumps by random
amounts across nights, weekends and public holidays; scheduled work (call-backs, deferrals,
step timeouts) fired when due. The ledger and the scheduler are kept in memory exactly as
apply.lua keeps them in Redis. After every step, independent checks:

* no contact outside its window (collection, reminder, verification, marketing: 08:00–21:00
  local; employers: working days 09:00–12:00 / 13:30–17:30 local);
* no frequency cap ever exceeded (7 collection calls per debt in 7 days; none within 7 days
  after an answered one; at most 3 answered calls per local day);
* nothing sent on an opted-out channel except transactional messages;
* every attempt outcome and every rule verdict is in the audit records.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from services.router.ledger import Entry, LedgerView
from services.router.machine import Effects, Machine
from services.router.messages import Dispatch
from services.router.plans import load_plans
from services.router.policy import load_policy
from services.router.policy.business_hours import is_working_day
from services.router.state import NotificationState
from shared.contract.models import (
    AttemptOutcome,
    CustomerProfile,
    NotificationRequested,
    TimerFired,
)

ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "Asia/Kolkata", None]
TYPES = ["overdue_notice", "repayment_due", "verification_callback", "otp", "loan_approved"]
OUTCOMES = ["delivered", "busy", "no_answer", "voicemail", "failed", "rejected"]
WINDOWED = {"collection", "reminder", "verification", "marketing"}
START = datetime(2026, 9, 28, 6, 0, tzinfo=UTC)  # before China's National Day week


class Streams(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = Machine(load_plans(), load_policy("cn"))
        self.now = START
        self.states: dict[str, NotificationState] = {}
        self.profiles: dict[str, CustomerProfile] = {}
        self.ledger: dict[str, list[Entry]] = defaultdict(list)
        self.timers: dict[str, tuple[float, list[Any]]] = {}
        self.in_flight: dict[tuple[str, int, int], Dispatch] = {}
        self.calls: dict[str, list[tuple[datetime, str]]] = defaultdict(list)  # collection
        self.answered: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
        self.n = 0

    @initialize(
        zones=st.lists(st.sampled_from(ZONES), min_size=1, max_size=3),
        opted_out=st.lists(st.sampled_from(["sms", "voice", "email", "push"]), max_size=2),
    )
    def customers(self, zones: list[str | None], opted_out: list[str]) -> None:
        for i, tz in enumerate(zones):
            self.profiles[f"c{i}"] = CustomerProfile.model_validate(
                {
                    "schema": "customer.profile/v1",
                    "customer_id": f"c{i}",
                    "phone": f"+86138000{i:05d}",
                    "email": f"b{i}@example.com",
                    "push_tokens": [f"tok{i}"],
                    "timezone": tz,
                    "opted_out_channels": opted_out if i == 0 else [],
                    "backup_contacts": [
                        {"relation": "employer", "phone": f"+86139000{i:05d}"},
                        {"relation": "spouse", "phone": f"+86137000{i:05d}"},
                    ],
                }
            )

    # --- moves ----------------------------------------------------------------------------

    @rule(
        type_=st.sampled_from(TYPES),
        who=st.integers(0, 2),
        loan=st.sampled_from(["L1", "L2"]),
        priority=st.sampled_from(["normal", "urgent"]),
    )
    def notify(self, type_: str, who: int, loan: str, priority: str) -> None:
        cid = f"c{who % len(self.profiles)}"
        self.n += 1
        req = NotificationRequested.model_validate(
            {
                "schema": "notification.requested/v1",
                "id": f"n{self.n}",
                "type": type_,
                "customer_id": cid,
                "priority": priority,
                "occurred_at": self.now.isoformat(),
                "data": {"loan_id": loan, "amount_due": "100", "code": "123456"},
            }
        )
        state, fx = self.machine.start(req, self.profiles[cid], self.now, self._view(cid))
        self.states[state.id] = state
        self._apply(state, fx)

    @precondition(lambda self: bool(self.in_flight))
    @rule(pick=st.integers(0, 10_000), outcome=st.sampled_from(OUTCOMES))
    def answer(self, pick: int, outcome: str) -> None:
        key = sorted(self.in_flight)[pick % len(self.in_flight)]
        d = self.in_flight.pop(key)
        state = self.states[d.notification_id]
        out = AttemptOutcome(
            notification_id=d.notification_id,
            customer_id=d.customer_id,
            channel=d.channel,
            leg=d.leg,
            attempt=d.attempt,
            outcome=outcome,  # type: ignore[arg-type]
            provider="prop",
            at=self.now,
        )
        fx = self.machine.on_outcome(state, out, self.now, self._view(d.customer_id))
        if fx is not None:
            if outcome == "delivered" and d.channel == "voice" and d.leg < len(state.legs):
                leg = state.legs[d.leg]
                if state.category == "collection" and leg.kind != "backup_contact":
                    self.answered[d.customer_id].append((self.now, _debt(state)))
            self._apply(state, fx)

    @rule(minutes=st.integers(1, 60 * 72))
    def wait(self, minutes: int) -> None:
        self.now += timedelta(minutes=minutes)
        for _ in range(50):  # fire what came due, and what that schedules for now
            due = sorted((at, m, body) for m, (at, body) in self.timers.items())
            due = [x for x in due if x[0] <= self.now.timestamp()]
            if not due:
                return
            for at, m, (kind, cid, nid, leg, att) in due:
                self.timers.pop(m, None)
                state = self.states[nid]
                t = TimerFired(
                    kind=kind,
                    notification_id=nid,
                    customer_id=cid,
                    leg=leg,
                    attempt=att,
                    due_at=datetime.fromtimestamp(at, UTC),
                )
                fx = self.machine.on_timer(state, t, self.now, self._view(cid))
                if fx is not None:
                    self._apply(state, fx)

    # --- bookkeeping, as apply.lua does it ------------------------------------------------

    def _view(self, cid: str) -> LedgerView:
        return LedgerView(0, list(self.ledger[cid]))

    def _apply(self, state: NotificationState, fx: Effects) -> None:
        cid = state.customer_id
        gone = set(fx.ledger_rem)
        import orjson

        self.ledger[cid] = [
            e
            for e in self.ledger[cid]
            if orjson.dumps([e.channel, e.kind, e.debt, e.attempt_id]).decode() not in gone
        ]
        for m, at in fx.ledger_add:
            channel, kind, debt, aid = orjson.loads(m)
            self.ledger[cid].append(Entry(channel, kind, debt, aid, at))
        for m in fx.timers_del:
            self.timers.pop(m, None)
        for m, at in fx.timers_add:
            self.timers[m] = (at, orjson.loads(m))
        for d in fx.dispatches:
            self._check_dispatch(state, d)
            self.in_flight[(d.notification_id, d.leg, d.attempt)] = d
        if fx.final is not None:
            for k in [k for k in self.in_flight if k[0] == state.id and k[1] < len(state.legs)]:
                del self.in_flight[k]
        # every verdict and every outcome is audited
        texts = [r.decision or "" for r in fx.records]
        for verdict, rule_name, _channel in fx.decisions:
            assert any(t.startswith(f"{verdict}: {rule_name}") for t in texts), (verdict, texts)
        outcomes = [r for r in fx.records if r.outcome is not None]
        assert len(outcomes) >= len([a for a in fx.decisions if a[0] == "suppressed"])

    def _check_dispatch(self, state: NotificationState, d: Dispatch) -> None:
        tz = ZoneInfo(state.policy.timezone or "Asia/Shanghai")
        local = self.now.astimezone(tz)
        leg = (
            state.legs[d.leg] if d.leg < len(state.legs) else state.notices[d.leg - len(state.legs)]
        )
        if state.category in WINDOWED:
            assert 8 <= local.hour < 21, f"{state.category} contact at {local}"
        if leg.kind == "backup_contact" and leg.relation == "employer":
            minutes = local.hour * 60 + local.minute
            assert is_working_day(state.policy.country, local.date())
            assert 540 <= minutes < 720 or 810 <= minutes < 1050, f"employer called at {local}"
        if state.category == "collection":
            assert leg.kind != "backup_contact", "collection reached a third party"
        if state.category != "transactional" and leg.kind != "backup_contact":
            assert d.channel not in state.policy.opted_out_channels
        if d.channel == "voice" and state.category == "collection":
            debt = _debt(state)
            calls = self.calls[state.customer_id]
            week = [t for t, dd in calls if dd == debt and t > self.now - timedelta(days=7)]
            assert len(week) < 7, "an 8th collection call in 7 days"
            recent = [
                t
                for t, dd in self.answered[state.customer_id]
                if dd == debt and t > self.now - timedelta(days=7)
            ]
            assert not recent, "a call within 7 days after an answered one"
            calls.append((self.now, debt))

    @invariant()
    def no_notification_is_stuck(self) -> None:
        """Every notification is final, or waits for an attempt in flight or a timer."""
        waiting = {body[2] for _, body in self.timers.values()}
        flying = {k[0] for k in self.in_flight}
        for nid, state in self.states.items():
            if state.final:
                continue
            if state.phase == "dispatched":
                assert nid in flying, f"{nid} waits for an attempt nobody has"
            assert nid in waiting, f"{nid} has no timer ({state.phase}, leg {state.leg})"

    @invariant()
    def at_most_three_answered_calls_per_local_day(self) -> None:
        for cid, answered in self.answered.items():
            tz = ZoneInfo(self.profiles[cid].timezone or "Asia/Shanghai")
            per_day: dict[date, int] = defaultdict(int)
            for t, _ in answered:
                per_day[t.astimezone(tz).date()] += 1
            assert max(per_day.values(), default=0) <= 3


def _debt(state: NotificationState) -> str:
    return str(state.data.get("loan_id") or "-")


Streams.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStreams = Streams.TestCase
