"""The routing state machine: pure functions from (state, event, now) to (state, effects).

No I/O happens here: the engine reads state, calls these, and writes the new state together
with its effects atomically. Stale events (a duplicate outcome, a timer for a step already
left) change nothing and return None.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

import msgspec
import orjson
from msgspec.structs import replace

from services.router import messages
from services.router.controls import Controls, apply_controls
from services.router.ledger import Entry, LedgerView, member
from services.router.messages import (
    Attempt,
    CommsRecord,
    Dispatch,
    NotificationStatus,
    Request,
    RequestContacts,
)
from services.router.plans import PlanBook
from services.router.policy import Contact, ContactPolicy, Verdict
from services.router.policy.localtime import resolve_local
from services.router.state import AttemptEntry, Leg, NotificationState, PolicyContext
from shared.contract.models import (
    AttemptOutcome,
    BackupContact,
    Channel,
    Contacts,
    CustomerProfile,
    FinalStatus,
    Outcome,
    TimerFired,
)
from shared.masking import mask_address

RECORD_NS = uuid.UUID("5b0f3a52-8d7e-4c1e-9f57-3c6e0c1d2a90")
TimerKind = str

# how an attempt that no outcome reached within its step's timeout ends its detail (the
# outcome is unknown: the plan moves on rather than trying the same channel again)
STEP_TIMEOUT = "(step timeout)"


def timer_member(
    kind: TimerKind, customer_id: str, notification_id: str, leg: int, att: int
) -> str:
    """The scheduler's member for one piece of scheduled work (stable, so it can be removed)."""
    return orjson.dumps([kind, customer_id, notification_id, leg, att]).decode()


class Effects(msgspec.Struct):
    """What a transition asks the engine to do, all or nothing with the new state.

    A msgspec Struct (one per transition on the hot path): its empty lists are made in C,
    where a dataclass calls a default factory per field."""

    dispatches: list[Dispatch] = msgspec.field(default_factory=list)
    records: list[CommsRecord] = msgspec.field(default_factory=list)
    final: NotificationStatus | None = None
    timers_add: list[tuple[str, float]] = msgspec.field(default_factory=list)
    timers_del: list[str] = msgspec.field(default_factory=list)
    # (channel left, channel tried next or "none" when the plan is exhausted, reason)
    fallbacks: list[tuple[str, str, str]] = msgspec.field(default_factory=list)
    # the frequency ledger: entries to add (member, epoch s) and remove; `ledger_read`: a
    # decision used the ledger, so the transition holds only if nobody wrote it since
    ledger_add: list[tuple[str, float]] = msgspec.field(default_factory=list)
    ledger_rem: list[str] = msgspec.field(default_factory=list)
    ledger_read: bool = False
    # verdict, rule, channel
    decisions: list[tuple[str, str, str]] = msgspec.field(default_factory=list)


class Machine:
    """Plans, advances and finishes notifications.

    Its outputs are msgspec mirrors of the contract models (services/router/messages.py),
    built from values validated on the way in: this is the hot path.
    """

    def __init__(
        self, plans: PlanBook, policy: ContactPolicy | None = None, timeout_floor_s: float = 0.0
    ) -> None:
        """`timeout_floor_s`: the shortest step timeout (a simulated clock's real minimum)."""
        self.plans = plans
        self.policy = policy or ContactPolicy()
        self.timeout_floor_s = timeout_floor_s
        # Each plan step as a leg with no address yet: expanded per notification by replace().
        self._steps = {
            type_: [
                Leg(
                    step=i,
                    channel=step.channel,
                    address=None,
                    timeout_s=max(plans.timeout_s(step), timeout_floor_s),
                    max_attempts=plans.max_attempts(step),
                    retry_delay_s=plans.retry_delay_s(step),
                    retry_busy_s=step.retry.delay_s("busy") if step.retry else None,
                    retry_no_answer_s=step.retry.delay_s("no_answer") if step.retry else None,
                    retry_voicemail_s=step.retry.delay_s("voicemail") if step.retry else None,
                    max_calls=step.retry.max_calls if step.retry else 1,
                    missed_call_sms=step.missed_call_sms,
                )
                for i, step in enumerate(plan.steps)
            ]
            for type_, plan in plans.plans.items()
        }
        self._notice_timeout_s = max(plans.defaults.timeout_s.get("sms", 120.0), timeout_floor_s)

    def needs_ledger(self, state_or_type: NotificationState | str, category: str = "") -> bool:
        """Whether transitions of this notification may read the frequency ledger."""
        if isinstance(state_or_type, NotificationState):
            st = state_or_type
            return self.policy.needs_ledger(st.category, {leg.channel for leg in st.legs})
        return self._type_needs_ledger(state_or_type, category)

    @lru_cache(maxsize=256)  # noqa: B019 (a handful of types and categories, for the life)
    def _type_needs_ledger(self, type_: str, category: str) -> bool:
        plan = self.plans.get(type_)
        if plan is None:
            return False
        cat = category or plan.category
        return self.policy.needs_ledger(cat, {s.channel for s in plan.steps})  # type: ignore[arg-type]

    # --- entry points ---------------------------------------------------------------------

    def start(
        self,
        req: Request,
        profile: CustomerProfile | None,
        now: datetime,
        ledger: LedgerView | None = None,
        controls: Controls | None = None,
    ) -> tuple[NotificationState, Effects]:
        """A new notification: expand its plan into legs and make the first move, with the
        borrower's own controls (opt-outs, a hardship hold) applied to its policy context."""
        plan = self.plans.get(req.type)
        if plan is None:  # the engine checks first; this guards direct callers
            raise KeyError(req.type)
        phone = (req.contacts.phone if req.contacts else None) or (
            profile.phone if profile else None
        )
        cfg = self.policy.config
        tz_name, country = resolve_local(
            profile.timezone if profile else None,
            phone,
            cfg.default_timezone,
            cfg.default_country,
        )
        state = NotificationState(
            id=req.id,
            customer_id=req.customer_id,
            type=req.type,
            category=req.category or plan.category,
            priority=req.priority,
            locale=req.locale or (profile.locale if profile and profile.locale else "en-US"),
            data=req.data,
            occurred_at=req.occurred_at,
            expires_at=req.expires_at,
            received_at=now,
            legs=self._legs(req.type, req.contacts, profile),
            policy=PolicyContext(
                opted_out_channels=profile.opted_out_channels if profile else [],
                revoked_channels=[
                    c for c, v in (profile.consents if profile else {}).items() if v == "revoked"
                ],
                timezone=tz_name,
                country=country,
                quiet_hours=[(q.from_, q.to) for q in profile.quiet_hours] if profile else [],
                profile_at=profile.updated_at.timestamp()
                if profile and profile.updated_at
                else None,
            ),
        )
        if controls is not None:
            state.policy = apply_controls(state.policy, controls)
        fx = Effects()
        if state.expires_at is not None:
            if state.expires_at <= now:
                self._finish(state, fx, now, "expired", "expired before the first attempt")
                return state, fx
            fx.timers_add.append(
                (self._member(state, "expire", 0, 0), state.expires_at.timestamp())
            )
        self._advance(state, fx, 0, now, ledger)
        return state, fx

    def on_outcome(
        self,
        state: NotificationState,
        out: AttemptOutcome,
        now: datetime,
        ledger: LedgerView | None = None,
    ) -> Effects | None:
        """An attempt's outcome from a channel service."""
        if out.leg >= len(state.legs):
            return self._on_notice_outcome(state, out)
        if (
            state.final
            or state.phase != "dispatched"
            or out.leg != state.leg
            or out.attempt != state.attempt
        ):
            return None
        fx = Effects()
        fx.timers_del.append(self._member(state, "step_timeout", out.leg, out.attempt))
        leg = state.legs[out.leg]
        self._record_attempt(
            state, fx, leg, out.outcome, out.at, out.provider, out.detail, out.provider_message_id
        )
        self._ledger_outcome(state, fx, leg, out.outcome, now, ledger)
        self._after_outcome(state, fx, leg, out.outcome, now, ledger)
        return fx

    def on_timer(
        self,
        state: NotificationState,
        t: TimerFired,
        now: datetime,
        ledger: LedgerView | None = None,
    ) -> Effects | None:
        """Scheduled work came due: a step timed out, a retry or deferral resumes, or expiry."""
        if state.final:
            return None
        fx = Effects()
        if t.kind == "expire":
            fx.timers_del.append(
                self._member(state, state_timer_kind(state), state.leg, state.attempt)
            )
            if state.phase == "dispatched" and state.legs:
                self._ledger_outcome(state, fx, state.legs[state.leg], "failed", now, ledger)
            self._finish(state, fx, now, "expired", "expires_at passed before delivery")
            return fx
        if t.leg != state.leg or t.attempt != state.attempt:
            return None
        leg = state.legs[t.leg]
        if t.kind == "step_timeout" and state.phase == "dispatched":
            detail = f"no outcome within {leg.timeout_s:g} s {STEP_TIMEOUT}"
            self._record_attempt(state, fx, leg, "failed", now, None, detail, None)
            self._ledger_outcome(state, fx, leg, "failed", now, ledger)
            fx.fallbacks.append((leg.channel, _next_channel(state, t.leg), "timeout"))
            self._advance(state, fx, state.leg + 1, now, ledger)
            return fx
        if t.kind == "retry" and state.phase == "retry_wait":
            if not self._try_leg(state, fx, state.leg, state.attempt, now, ledger):
                self._advance(state, fx, state.leg + 1, now, ledger)  # suppressed on resuming
            return fx
        return None

    def on_erase(self, state: NotificationState, now: datetime) -> Effects | None:
        """The customer is erased (profile tombstone) while this notification is in flight:
        it ends `suppressed` with the decision `suppressed: erased`; its timers go. An attempt
        already handed to a provider cannot be recalled (docs/architecture.md)."""
        if state.final:
            return None
        fx = Effects()
        fx.timers_del.append(self._member(state, state_timer_kind(state), state.leg, state.attempt))
        self._finish(state, fx, now, "suppressed", "suppressed: erased")
        return fx

    # --- moves ----------------------------------------------------------------------------

    def _after_outcome(
        self,
        state: NotificationState,
        fx: Effects,
        leg: Leg,
        outcome: Outcome,
        now: datetime,
        ledger: LedgerView | None,
    ) -> None:
        if outcome == "delivered":
            self._finish(state, fx, now, "delivered", None, channel=leg.channel)
            return
        if outcome == "failed" and state.attempt < leg.max_attempts:
            delay = leg.retry_delay_s * (2 ** (state.attempt - 1))
            self._retry_later(state, fx, leg, now, delay, f"attempt {state.attempt + 1}", "retry")
            return
        if outcome == "deferred":  # a provider may defer (throttling): a new attempt, later
            state.attempt += 1
            self._defer(
                state,
                fx,
                leg,
                Verdict(
                    "defer", "provider_deferred", now + timedelta(seconds=leg.retry_delay_s or 1.0)
                ),
                now,
            )
            return
        if outcome in ("busy", "no_answer", "voicemail") and leg.channel == "voice":
            state.missed_calls += 1
            if leg.missed_call_sms and state.missed_calls == 1 and outcome != "voicemail":
                self._notice(state, fx, leg, "missed_call", now, ledger)
            delay = {
                "busy": leg.retry_busy_s,
                "no_answer": leg.retry_no_answer_s,
                "voicemail": leg.retry_voicemail_s,
            }[outcome]
            if delay is not None and state.missed_calls < leg.max_calls:
                what = f"call-back {state.missed_calls} of {leg.max_calls - 1} after {outcome}"
                self._retry_later(state, fx, leg, now, delay, what, "callback")
                return
        fx.fallbacks.append((leg.channel, _next_channel(state, state.leg), outcome))
        self._advance(state, fx, state.leg + 1, now, ledger)

    def _retry_later(
        self,
        state: NotificationState,
        fx: Effects,
        leg: Leg,
        now: datetime,
        delay_s: float,
        what: str,
        suffix: str,
    ) -> None:
        """The same leg again after `delay_s` (a new attempt), with a `retry: <what> at
        <local time>` decision."""
        due = now + timedelta(seconds=delay_s)
        state.attempt += 1
        state.phase = "retry_wait"
        fx.timers_add.append(
            (self._member(state, "retry", state.leg, state.attempt), due.timestamp())
        )
        at = due.astimezone(self._tz(state)).isoformat(timespec="seconds")
        fx.records.append(
            self._record(state, leg, now, decision=f"retry: {what} at {at}", suffix=suffix)
        )

    def _advance(
        self,
        state: NotificationState,
        fx: Effects,
        start: int,
        now: datetime,
        ledger: LedgerView | None,
    ) -> None:
        """Try legs from `start` on until one is dispatched or deferred, else finish."""
        state.missed_calls = 0
        for index in range(start, len(state.legs)):
            if self._try_leg(state, fx, index, 1, now, ledger):
                return
        self._finish(state, fx, now, self._final_status(state), None)

    def _contact(self, state: NotificationState, leg: Leg, ledger: LedgerView | None) -> Contact:
        p = state.policy
        return Contact(
            customer_id=state.customer_id,
            category=state.category,
            priority=state.priority,
            channel=leg.channel,
            kind=leg.kind,
            relation=leg.relation,
            address=leg.address,
            data=state.data,
            tz=self._tz(state),
            country=p.country,
            quiet_hours=p.quiet_hours,
            opted_out=p.opted_out_channels,
            revoked=p.revoked_channels,
            ledger=ledger,
            hold_until=p.hold_until,
        )

    def _tz(self, state: NotificationState) -> ZoneInfo:
        return _zone(state.policy.timezone or self.policy.config.default_timezone)

    def _try_leg(
        self,
        state: NotificationState,
        fx: Effects,
        index: int,
        attempt: int,
        now: datetime,
        ledger: LedgerView | None,
    ) -> bool:
        """Ask policy, then dispatch (True), defer (True) or suppress (False: move on)."""
        leg = state.legs[index]
        state.leg, state.attempt = index, attempt
        contact = self._contact(state, leg, ledger)
        verdict = self.policy.decide(contact, now)
        fx.ledger_read = fx.ledger_read or verdict.read_ledger
        if verdict.action == "suppress":
            fx.decisions.append(("suppressed", verdict.rule, leg.channel))
            self._record_attempt(state, fx, leg, "suppressed", now, None, verdict.rule, None)
            fx.fallbacks.append(
                (leg.channel, _next_channel(state, index), f"suppressed_{verdict.rule}")
            )
            return False
        if verdict.action == "defer" and verdict.until is not None:
            self._defer(state, fx, leg, verdict, now)
            return True
        assert leg.address is not None  # policy suppresses legs without an address
        state.phase = "dispatched"
        fx.dispatches.append(self._dispatch(state, leg, index, attempt, now))
        self._ledger_dispatch(state, fx, leg, index, attempt, now, ledger)
        due = now + timedelta(seconds=leg.timeout_s)
        fx.timers_add.append((self._member(state, "step_timeout", index, attempt), due.timestamp()))
        return True

    def _dispatch(
        self, state: NotificationState, leg: Leg, index: int, attempt: int, now: datetime
    ) -> Dispatch:
        assert leg.address is not None
        return Dispatch(
            notification_id=state.id,
            customer_id=state.customer_id,
            type=state.type,
            category=state.category,
            priority=state.priority,
            locale=state.locale,
            channel=leg.channel,
            leg=index,
            attempt=attempt,
            recipient=leg.address,
            recipient_kind="borrower" if leg.kind == "notice" else leg.kind,
            data=state.data,
            dispatched_at=now,
            requested_at=state.received_at,
            template=leg.template,
        )

    def _notice(
        self,
        state: NotificationState,
        fx: Effects,
        called: Leg,
        template: str,
        now: datetime,
        ledger: LedgerView | None,
    ) -> None:
        """One side message beside the plan (e.g. the missed-call SMS), judged by the same
        rules; its outcome is recorded but never moves the plan. Never deferred: a notice
        that may not go now is suppressed."""
        notice = Leg(
            step=called.step,
            channel="sms",
            address=called.address,
            kind="notice",
            timeout_s=self._notice_timeout_s,
            max_attempts=1,
            retry_delay_s=0.0,
            template=template,
        )
        index = len(state.legs) + len(state.notices)
        state.notices.append(notice)
        verdict = self.policy.decide(self._contact(state, notice, ledger), now)
        if verdict.action != "allow":
            rule = verdict.rule
            fx.decisions.append(("suppressed", rule, notice.channel))
            self._record_notice(state, fx, notice, index, "suppressed", now, None, rule)
            return
        fx.dispatches.append(self._dispatch(state, notice, index, 1, now))

    def _on_notice_outcome(self, state: NotificationState, out: AttemptOutcome) -> Effects | None:
        i = out.leg - len(state.legs)
        if i >= len(state.notices) or out.attempt != 1:
            return None
        if any(a.leg == out.leg for a in state.attempts):
            return None  # already recorded
        fx = Effects()
        self._record_notice(
            state,
            fx,
            state.notices[i],
            out.leg,
            out.outcome,
            out.at,
            out.provider,
            out.detail,
            out.provider_message_id,
        )
        return fx

    def _record_notice(
        self,
        state: NotificationState,
        fx: Effects,
        notice: Leg,
        index: int,
        outcome: Outcome,
        at: datetime,
        provider: str | None,
        detail: str | None,
        provider_message_id: str | None = None,
    ) -> None:
        leg, attempt = state.leg, state.attempt
        state.leg, state.attempt = index, 1  # the record names the notice, not the plan leg
        try:
            self._record_attempt(
                state, fx, notice, outcome, at, provider, detail, provider_message_id
            )
        finally:
            state.leg, state.attempt = leg, attempt

    # --- the frequency ledger -------------------------------------------------------------

    def _tracked(self, leg: Leg) -> bool:
        return leg.channel in self.policy.ledger_channels and leg.kind in ("borrower", "alt_phone")

    def _ledger_dispatch(
        self,
        state: NotificationState,
        fx: Effects,
        leg: Leg,
        index: int,
        attempt: int,
        now: datetime,
        ledger: LedgerView | None,
    ) -> None:
        if not self._tracked(leg):
            return
        aid = f"{state.id}:{index}:{attempt}"
        debt = _debt(state)
        at = now.timestamp()
        for kind in ("attempt", "inflight"):
            fx.ledger_add.append((member(leg.channel, kind, debt, aid), at))
            if ledger is not None:
                ledger.entries.append(Entry(leg.channel, kind, debt, aid, at))

    def _ledger_outcome(
        self,
        state: NotificationState,
        fx: Effects,
        leg: Leg,
        outcome: Outcome,
        now: datetime,
        ledger: LedgerView | None,
    ) -> None:
        if not self._tracked(leg):
            return
        aid = f"{state.id}:{state.leg}:{state.attempt}"
        debt = _debt(state)
        fx.ledger_rem.append(member(leg.channel, "inflight", debt, aid))
        if ledger is not None:
            ledger.entries = [
                e for e in ledger.entries if not (e.kind == "inflight" and e.attempt_id == aid)
            ]
        if outcome == "delivered":
            at = now.timestamp()
            fx.ledger_add.append((member(leg.channel, "answered", debt, aid), at))
            if ledger is not None:
                ledger.entries.append(Entry(leg.channel, "answered", debt, aid, at))

    def _defer(
        self, state: NotificationState, fx: Effects, leg: Leg, verdict: Verdict, now: datetime
    ) -> None:
        assert verdict.until is not None
        until = verdict.until
        state.phase = "retry_wait"
        fx.decisions.append(("deferred", verdict.rule, leg.channel))
        fx.timers_add.append(
            (self._member(state, "retry", state.leg, state.attempt), until.timestamp())
        )
        fx.records.append(
            self._record(
                state,
                leg,
                now,
                outcome="deferred",
                decision=verdict.decision(self._tz(state)),
                suffix=f"defer-{until.timestamp():.0f}",
            )
        )

    def _finish(
        self,
        state: NotificationState,
        fx: Effects,
        now: datetime,
        status: FinalStatus,
        decision: str | None,
        channel: Channel | None = None,
    ) -> None:
        state.status = status
        state.phase = "final"
        state.channel = channel
        state.completed_at = now
        if state.expires_at is not None and status != "expired":
            fx.timers_del.append(self._member(state, "expire", 0, 0))
        if decision:
            fx.records.append(self._record(state, None, now, decision=decision, suffix="final"))
        fx.final = NotificationStatus(
            notification_id=state.id,
            customer_id=state.customer_id,
            type=state.type,
            status=status,
            channel=state.channel,
            attempts=[
                Attempt(
                    channel=a.channel,
                    recipient=a.recipient,
                    outcome=a.outcome,
                    at=a.at,
                    provider=a.provider,
                    detail=a.detail,
                )
                for a in state.attempts
            ],
            completed_at=now,
        )

    # --- helpers --------------------------------------------------------------------------

    @staticmethod
    def _final_status(state: NotificationState) -> FinalStatus:
        if state.attempts and all(a.outcome == "suppressed" for a in state.attempts):
            return "suppressed"
        if not state.attempts:
            return "suppressed"
        return "failed"

    def _record_attempt(
        self,
        state: NotificationState,
        fx: Effects,
        leg: Leg,
        outcome: Outcome,
        at: datetime,
        provider: str | None,
        detail: str | None,
        provider_message_id: str | None,
    ) -> None:
        masked = mask_address(leg.channel, leg.address)
        state.attempts.append(
            AttemptEntry(
                leg=state.leg,
                attempt=state.attempt,
                channel=leg.channel,
                recipient=masked,
                outcome=outcome,
                at=at,
                provider=provider,
                detail=detail,
            )
        )
        # A record carries an outcome, or a decision the router took (suppression, timeout).
        decision = (
            f"suppressed: {detail}"
            if outcome == "suppressed"
            else detail
            if provider is None and detail
            else None
        )
        fx.records.append(
            self._record(
                state,
                leg,
                at,
                outcome=outcome,
                decision=decision,
                provider=provider,
                provider_message_id=provider_message_id,
                suffix="outcome",
            )
        )

    def _record(
        self,
        state: NotificationState,
        leg: Leg | None,
        at: datetime,
        *,
        suffix: str,
        outcome: Outcome | None = None,
        decision: str | None = None,
        provider: str | None = None,
        provider_message_id: str | None = None,
    ) -> CommsRecord:
        key = f"{state.id}:{state.leg}:{state.attempt}:{suffix}"
        # a message about an inquiry (a reply, a survey) is linked to it in the timeline
        inquiry = state.data.get("inquiry_id")
        return CommsRecord(
            inquiry_id=inquiry if isinstance(inquiry, str) else None,
            record_id=str(uuid.uuid5(RECORD_NS, key)),
            notification_id=state.id,
            customer_id=state.customer_id,
            channel=leg.channel if leg else None,
            recipient=mask_address(leg.channel, leg.address) if leg else None,
            direction="outbound",
            outcome=outcome,
            decision=decision,
            attempt=state.attempt if leg else None,
            provider=provider,
            provider_message_id=provider_message_id,
            at=at,
        )

    @staticmethod
    def _member(state: NotificationState, kind: str, leg: int, attempt: int) -> str:
        return timer_member(kind, state.customer_id, state.id, leg, attempt)

    def _legs(
        self, type_: str, override: RequestContacts | None, profile: CustomerProfile | None
    ) -> list[Leg]:
        plan = self.plans.plans[type_]
        o: RequestContacts = override or _NO_CONTACTS
        if plan.request_contacts_only:
            profile = None
        phone = o.phone or (profile.phone if profile else None)
        email = o.email or (profile.email if profile else None)
        tokens = (
            o.push_tokens if o.push_tokens is not None else (profile.push_tokens if profile else [])
        )
        backups: Sequence[BackupContact | messages.BackupContact] = (
            o.backup_contacts
            if o.backup_contacts is not None
            else (profile.backup_contacts if profile else [])
        )
        alt_phones = profile.alt_phones if profile and not o.phone else []
        legs: list[Leg] = []
        for step, base in zip(plan.steps, self._steps[type_], strict=True):
            if step.target == "backup_contacts":
                rank = {r: n for n, r in enumerate(step.relations)}
                ordered = sorted(backups, key=lambda b: rank.get(b.relation, len(rank)))
                found = [
                    (b.email if step.channel == "email" else b.phone, b.relation) for b in ordered
                ]
                found = [(a, r) for a, r in found if a]
                if not found:
                    legs.append(replace(base, kind="backup_contact"))
                legs += [
                    replace(base, address=a, kind="backup_contact", relation=r) for a, r in found
                ]
            elif step.channel == "voice":
                legs.append(replace(base, address=phone))
                if alt_phones:
                    legs += [
                        replace(base, address=p, kind="alt_phone") for p in alt_phones if p != phone
                    ]
            elif step.channel == "sms":
                legs.append(replace(base, address=phone))
            elif step.channel == "email":
                legs.append(replace(base, address=email))
            else:
                legs += [replace(base, address=t) for t in tokens] or [base]
        if plan.request_contacts_only:
            legs = [leg for leg in legs if leg.address is not None]
        return legs


_NO_CONTACTS = Contacts()


def _debt(state: NotificationState) -> str:
    loan = state.data.get("loan_id")
    return str(loan) if loan not in (None, "") else "-"


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def state_timer_kind(state: NotificationState) -> str:
    """The kind of timer a live notification is waiting on in its current phase."""
    return "retry" if state.phase == "retry_wait" else "step_timeout"


def _next_channel(state: NotificationState, leg: int) -> str:
    """The channel of the leg after `leg` (the one a fallback from `leg` tries next), or
    `none` when `leg` was the plan's last."""
    return state.legs[leg + 1].channel if leg + 1 < len(state.legs) else "none"
