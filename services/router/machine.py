"""The routing state machine: pure functions from (state, event, now) to (state, effects).

No I/O happens here: the engine reads state, calls these, and writes the new state together
with its effects atomically. Stale events (a duplicate outcome, a timer for a step already
left) change nothing and return None.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import orjson
from msgspec.structs import replace

from services.router.messages import Attempt, CommsRecord, Dispatch, NotificationStatus
from services.router.plans import PlanBook
from services.router.policy import ContactPolicy
from services.router.state import AttemptEntry, Leg, NotificationState, PolicyContext
from shared.contract.models import (
    AttemptOutcome,
    Channel,
    Contacts,
    CustomerProfile,
    FinalStatus,
    NotificationRequested,
    Outcome,
    TimerFired,
)
from shared.masking import mask_address

RECORD_NS = uuid.UUID("5b0f3a52-8d7e-4c1e-9f57-3c6e0c1d2a90")
TimerKind = str


def timer_member(
    kind: TimerKind, customer_id: str, notification_id: str, leg: int, att: int
) -> str:
    """The scheduler's member for one piece of scheduled work (stable, so it can be removed)."""
    return orjson.dumps([kind, customer_id, notification_id, leg, att]).decode()


@dataclass
class Effects:
    """What a transition asks the engine to do, all or nothing with the new state."""

    dispatches: list[Dispatch] = field(default_factory=list)
    records: list[CommsRecord] = field(default_factory=list)
    final: NotificationStatus | None = None
    timers_add: list[tuple[str, float]] = field(default_factory=list)
    timers_del: list[str] = field(default_factory=list)
    fallbacks: list[tuple[str, str]] = field(default_factory=list)  # (channel left, reason)


class Machine:
    """Plans, advances and finishes notifications.

    Its outputs are msgspec mirrors of the contract models (services/router/messages.py),
    built from values validated on the way in: this is the hot path.
    """

    def __init__(self, plans: PlanBook, policy: ContactPolicy | None = None) -> None:
        self.plans = plans
        self.policy = policy or ContactPolicy()
        # Each plan step as a leg with no address yet: expanded per notification by replace().
        self._steps = {
            type_: [
                Leg(
                    step=i,
                    channel=step.channel,
                    address=None,
                    timeout_s=plans.timeout_s(step),
                    max_attempts=plans.max_attempts(step),
                    retry_delay_s=plans.retry_delay_s(step),
                )
                for i, step in enumerate(plan.steps)
            ]
            for type_, plan in plans.plans.items()
        }

    # --- entry points ---------------------------------------------------------------------

    def start(
        self,
        req: NotificationRequested,
        profile: CustomerProfile | None,
        now: datetime,
    ) -> tuple[NotificationState, Effects]:
        """A new notification: expand its plan into legs and make the first move."""
        plan = self.plans.get(req.type)
        if plan is None:  # the engine checks first; this guards direct callers
            raise KeyError(req.type)
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
                timezone=profile.timezone if profile else None,
            ),
        )
        fx = Effects()
        if state.expires_at is not None:
            if state.expires_at <= now:
                self._finish(state, fx, now, "expired", "expired before the first attempt")
                return state, fx
            fx.timers_add.append(
                (self._member(state, "expire", 0, 0), state.expires_at.timestamp())
            )
        self._advance(state, fx, 0, now)
        return state, fx

    def on_outcome(
        self, state: NotificationState, out: AttemptOutcome, now: datetime
    ) -> Effects | None:
        """An attempt's outcome from a channel service."""
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
        self._after_outcome(state, fx, leg, out.outcome, now)
        return fx

    def on_timer(self, state: NotificationState, t: TimerFired, now: datetime) -> Effects | None:
        """Scheduled work came due: a step timed out, a retry or deferral resumes, or expiry."""
        if state.final:
            return None
        fx = Effects()
        if t.kind == "expire":
            fx.timers_del.append(
                self._member(state, state_timer_kind(state), state.leg, state.attempt)
            )
            self._finish(state, fx, now, "expired", "expires_at passed before delivery")
            return fx
        if t.leg != state.leg or t.attempt != state.attempt:
            return None
        leg = state.legs[t.leg]
        if t.kind == "step_timeout" and state.phase == "dispatched":
            detail = f"no outcome within {leg.timeout_s:g} s (step timeout)"
            self._record_attempt(state, fx, leg, "failed", now, None, detail, None)
            fx.fallbacks.append((leg.channel, "timeout"))
            self._advance(state, fx, state.leg + 1, now)
            return fx
        if t.kind == "retry" and state.phase == "retry_wait":
            self._try_leg(state, fx, state.leg, state.attempt, now)
            return fx
        return None

    # --- moves ----------------------------------------------------------------------------

    def _after_outcome(
        self, state: NotificationState, fx: Effects, leg: Leg, outcome: Outcome, now: datetime
    ) -> None:
        if outcome == "delivered":
            self._finish(state, fx, now, "delivered", None, channel=leg.channel)
            return
        if outcome == "failed" and state.attempt < leg.max_attempts:
            delay = leg.retry_delay_s * (2 ** (state.attempt - 1))
            due = now + timedelta(seconds=delay)
            state.attempt += 1
            state.phase = "retry_wait"
            fx.timers_add.append(
                (self._member(state, "retry", state.leg, state.attempt), due.timestamp())
            )
            fx.records.append(
                self._record(
                    state,
                    leg,
                    now,
                    decision=f"retry: attempt {state.attempt} "
                    f"at {due.isoformat(timespec='seconds')}",
                    suffix="retry",
                )
            )
            return
        if outcome == "deferred":  # a provider may defer (throttling): a new attempt, later
            state.attempt += 1
            self._defer(
                state,
                fx,
                leg,
                now + timedelta(seconds=leg.retry_delay_s or 1.0),
                "provider deferred",
            )
            return
        fx.fallbacks.append((leg.channel, outcome))
        self._advance(state, fx, state.leg + 1, now)

    def _advance(self, state: NotificationState, fx: Effects, start: int, now: datetime) -> None:
        """Try legs from `start` on until one is dispatched or deferred, else finish."""
        for index in range(start, len(state.legs)):
            if self._try_leg(state, fx, index, 1, now):
                return
        self._finish(state, fx, now, self._final_status(state), None)

    def _try_leg(
        self, state: NotificationState, fx: Effects, index: int, attempt: int, now: datetime
    ) -> bool:
        """Ask policy, then dispatch (True), defer (True) or suppress (False: move on)."""
        leg = state.legs[index]
        state.leg, state.attempt = index, attempt
        verdict = self.policy.decide(state, leg, now)
        if verdict.action == "suppress":
            self._record_attempt(state, fx, leg, "suppressed", now, None, verdict.reason, None)
            fx.fallbacks.append((leg.channel, f"suppressed_{verdict.reason}"))
            return False
        if verdict.action == "defer" and verdict.until is not None:
            self._defer(state, fx, leg, verdict.until, verdict.reason)
            return True
        assert leg.address is not None  # policy suppresses legs without an address
        state.phase = "dispatched"
        fx.dispatches.append(
            Dispatch(
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
                recipient_kind=leg.kind,
                data=state.data,
                dispatched_at=now,
                requested_at=state.received_at,
            )
        )
        due = now + timedelta(seconds=leg.timeout_s)
        fx.timers_add.append((self._member(state, "step_timeout", index, attempt), due.timestamp()))
        return True

    def _defer(
        self, state: NotificationState, fx: Effects, leg: Leg, until: datetime, reason: str
    ) -> None:
        state.phase = "retry_wait"
        fx.timers_add.append(
            (self._member(state, "retry", state.leg, state.attempt), until.timestamp())
        )
        fx.records.append(
            self._record(
                state,
                leg,
                until,
                outcome="deferred",
                decision=f"deferred: {reason} until {until.isoformat(timespec='minutes')}",
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
        return CommsRecord(
            inquiry_id=None,
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
        self, type_: str, override: Contacts | None, profile: CustomerProfile | None
    ) -> list[Leg]:
        plan = self.plans.plans[type_]
        o = override or Contacts()
        phone = o.phone or (profile.phone if profile else None)
        email = o.email or (profile.email if profile else None)
        tokens = (
            o.push_tokens if o.push_tokens is not None else (profile.push_tokens if profile else [])
        )
        backups = (
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
                legs += [
                    replace(base, address=p, kind="alt_phone") for p in alt_phones if p != phone
                ]
            elif step.channel == "sms":
                legs.append(replace(base, address=phone))
            elif step.channel == "email":
                legs.append(replace(base, address=email))
            else:
                legs += [replace(base, address=t) for t in tokens] or [base]
        return legs


def state_timer_kind(state: NotificationState) -> str:
    """The kind of timer a live notification is waiting on in its current phase."""
    return "retry" if state.phase == "retry_wait" else "step_timeout"
