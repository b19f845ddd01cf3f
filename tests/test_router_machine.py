"""The routing state machine, driven directly: every path of the shipped plans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from services.router import messages
from services.router.machine import Machine, timer_member
from services.router.plans import load_plans
from services.router.policy import Contact, ContactPolicy, Verdict
from services.router.state import NotificationState
from shared.contract import models
from shared.contract.codec import decode
from shared.contract.models import (
    AttemptOutcome,
    CustomerProfile,
    NotificationRequested,
    TimerFired,
)

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def req(**kw: Any) -> NotificationRequested:
    body: dict[str, Any] = {
        "schema": "notification.requested/v1",
        "id": "n1",
        "type": "overdue_notice",
        "customer_id": "c1",
        "occurred_at": NOW.isoformat(),
    }
    body.update(kw)
    return NotificationRequested.model_validate(body)


def profile(**kw: Any) -> CustomerProfile:
    body: dict[str, Any] = {"schema": "customer.profile/v1", "customer_id": "c1"}
    body.update(kw)
    return CustomerProfile.model_validate(body)


def outcome(state: NotificationState, outcome: str, **kw: Any) -> AttemptOutcome:
    leg = state.legs[state.leg]
    return AttemptOutcome(
        notification_id=state.id,
        customer_id=state.customer_id,
        channel=leg.channel,
        leg=kw.pop("leg", state.leg),
        attempt=kw.pop("attempt", state.attempt),
        outcome=outcome,
        provider="test",
        at=NOW,
        **kw,  # type: ignore[arg-type]
    )


def timer(
    state: NotificationState, kind: str, leg: int | None = None, attempt: int | None = None
) -> TimerFired:
    return TimerFired(
        kind=kind,
        notification_id=state.id,
        customer_id=state.customer_id,  # type: ignore[arg-type]
        leg=state.leg if leg is None else leg,
        attempt=state.attempt if attempt is None else attempt,
        due_at=NOW,
    )


@pytest.fixture
def machine() -> Machine:
    return Machine(load_plans())


def path(state: NotificationState) -> list[str]:
    return [f"{a.channel} {a.outcome}" for a in state.attempts]


def test_busy_voice_falls_back_to_sms(machine: Machine) -> None:
    state, fx = machine.start(req(contacts={"phone": "+8613800000001"}), None, NOW)
    assert [d.channel for d in fx.dispatches] == ["voice"]
    assert fx.dispatches[0].recipient == "+8613800000001"
    assert fx.timers_add[0][0] == timer_member("step_timeout", "c1", "n1", 0, 1)
    fx = machine.on_outcome(state, outcome(state, "busy"), NOW)
    assert fx is not None
    assert [d.channel for d in fx.dispatches] == ["sms"]
    assert fx.timers_del == [timer_member("step_timeout", "c1", "n1", 0, 1)]
    assert fx.fallbacks == [("voice", "sms", "busy")]
    fx = machine.on_outcome(state, outcome(state, "delivered"), NOW)
    assert fx is not None and fx.final is not None
    assert (fx.final.status, fx.final.channel) == ("delivered", "sms")
    assert path(state) == ["voice busy", "sms delivered"]
    assert fx.final.attempts[0].recipient == "+86138****0001"


@pytest.mark.parametrize("bad", ["no_answer", "voicemail", "rejected", "bounced", "suppressed"])
def test_every_non_delivery_outcome_moves_on(machine: Machine, bad: str) -> None:
    state, _ = machine.start(req(contacts={"phone": "+8613800000002"}), None, NOW)
    fx = machine.on_outcome(state, outcome(state, bad), NOW)
    assert fx is not None and [d.channel for d in fx.dispatches] == ["sms"]


def test_failed_is_retried_with_backoff_then_moves_on(machine: Machine) -> None:
    state, _ = machine.start(req(type="otp", contacts={"phone": "+8613800000004"}), None, NOW)
    delays = []
    for attempt in (1, 2):
        fx = machine.on_outcome(state, outcome(state, "failed"), NOW)
        assert fx is not None and not fx.dispatches
        ((member, due),) = fx.timers_add
        assert member == timer_member("retry", "c1", "n1", 0, attempt + 1)
        delays.append(due - NOW.timestamp())
        fx = machine.on_timer(state, timer(state, "retry"), NOW)
        assert fx is not None and fx.dispatches[0].attempt == attempt + 1
    assert delays == [1.0, 2.0]
    fx = machine.on_outcome(state, outcome(state, "failed"), NOW)
    assert fx is not None and [d.channel for d in fx.dispatches] == ["voice"]
    fx = machine.on_outcome(state, outcome(state, "delivered"), NOW)
    assert fx is not None and fx.final is not None and fx.final.channel == "voice"
    assert path(state) == ["sms failed"] * 3 + ["voice delivered"]


def test_missing_addresses_are_suppressed_and_skipped(machine: Machine) -> None:
    state, fx = machine.start(
        req(type="repayment_due", contacts={"email": "li@example.com"}), None, NOW
    )
    assert [d.channel for d in fx.dispatches] == ["email"]
    assert path(state) == ["push suppressed", "sms suppressed"]
    assert [r.decision for r in fx.records] == ["suppressed: no_address"] * 2
    # each move names the channel left and the one tried next (the metric's from → to)
    assert fx.fallbacks == [
        ("push", "sms", "suppressed_no_address"),
        ("sms", "email", "suppressed_no_address"),
    ]


def test_no_address_anywhere_is_final_suppressed(machine: Machine) -> None:
    state, fx = machine.start(req(), None, NOW)
    assert fx.final is not None and fx.final.status == "suppressed"
    assert not fx.dispatches and state.final


def test_all_rejected_is_failed(machine: Machine) -> None:
    state, _ = machine.start(req(contacts={"phone": "+8613800000003"}), None, NOW)
    machine.on_outcome(state, outcome(state, "rejected"), NOW)
    fx = machine.on_outcome(state, outcome(state, "rejected"), NOW)
    assert fx is not None and fx.final is not None and fx.final.status == "failed"
    assert path(state) == ["voice rejected", "sms rejected", "email suppressed"]
    # the last leg's fallback has nowhere to go: `none`
    assert fx.fallbacks == [
        ("sms", "email", "rejected"),
        ("email", "none", "suppressed_no_address"),
    ]


def test_duplicate_and_stale_outcomes_change_nothing(machine: Machine) -> None:
    state, _ = machine.start(req(contacts={"phone": "+8613800000001"}), None, NOW)
    first = outcome(state, "busy")
    assert machine.on_outcome(state, first, NOW) is not None
    snapshot = msgspec.to_builtins(state)
    assert machine.on_outcome(state, first, NOW) is None
    assert machine.on_timer(state, timer(state, "step_timeout", leg=0, attempt=1), NOW) is None
    assert msgspec.to_builtins(state) == snapshot


def test_step_timeout_moves_on_without_retrying(machine: Machine) -> None:
    state, _ = machine.start(req(contacts={"phone": "+8613800000009"}), None, NOW)
    fx = machine.on_timer(state, timer(state, "step_timeout"), NOW)
    assert fx is not None and [d.channel for d in fx.dispatches] == ["sms"]
    assert fx.fallbacks == [("voice", "sms", "timeout")]
    assert state.attempts[0].outcome == "failed"
    assert "step timeout" in (state.attempts[0].detail or "")
    assert machine.on_outcome(state, outcome(state, "busy", leg=0, attempt=1), NOW) is None


def test_expiry(machine: Machine) -> None:
    past = req(
        expires_at=(NOW - timedelta(seconds=1)).isoformat(), contacts={"phone": "+8613800000001"}
    )
    state, fx = machine.start(past, None, NOW)
    assert fx.final is not None and fx.final.status == "expired" and not fx.dispatches
    later = req(
        expires_at=(NOW + timedelta(minutes=5)).isoformat(), contacts={"phone": "+8613800000001"}
    )
    state, fx = machine.start(later, None, NOW)
    assert timer_member("expire", "c1", "n1", 0, 0) in [m for m, _ in fx.timers_add]
    fx = machine.on_timer(state, timer(state, "expire", 0, 0), NOW)
    assert fx is not None and fx.final is not None and fx.final.status == "expired"
    assert machine.on_outcome(state, outcome(state, "delivered"), NOW) is None


def test_verification_callback_orders_employer_first_then_other_backups(machine: Machine) -> None:
    p = profile(
        phone="+8613800000001",
        backup_contacts=[
            {"name": "Spouse", "relation": "spouse", "phone": "+8613800000006"},
            {"name": "Boss", "relation": "employer", "phone": "+8613800000002"},
        ],
    )
    state, _ = machine.start(req(type="verification_callback"), p, NOW)
    assert [(lg.channel, lg.kind, lg.relation) for lg in state.legs] == [
        ("voice", "borrower", None),
        ("voice", "backup_contact", "employer"),
        ("voice", "backup_contact", "spouse"),
        ("sms", "borrower", None),
    ]
    assert state.legs[0].max_calls == 3 and state.legs[0].missed_call_sms
    assert state.legs[1].max_calls == 1  # no call-backs to third parties


def test_override_contacts_win_and_alt_phones_follow_for_voice(machine: Machine) -> None:
    p = profile(phone="+8613800000011", alt_phones=["+8613800000012"], email="a@example.com")
    state, _ = machine.start(req(), p, NOW)
    assert [lg.address for lg in state.legs] == [
        "+8613800000011",
        "+8613800000012",
        "+8613800000011",
        "a@example.com",
    ]
    state, _ = machine.start(req(contacts={"phone": "+8613800000099"}), p, NOW)
    assert [lg.address for lg in state.legs][:2] == ["+8613800000099", "+8613800000099"]


def test_opt_out_and_revoked_consent_are_suppressed_even_when_urgent(machine: Machine) -> None:
    p = profile(
        phone="+8613800000011",
        email="a@example.com",
        opted_out_channels=["voice"],
        consents={"sms": "revoked"},
    )
    state, fx = machine.start(req(priority="urgent"), p, NOW)
    assert [d.channel for d in fx.dispatches] == ["email"]
    assert [(a.channel, a.detail) for a in state.attempts] == [
        ("voice", "opted_out"),
        ("sms", "no_consent"),
    ]


def test_policy_can_defer_and_the_leg_resumes(machine: Machine) -> None:
    until = NOW + timedelta(hours=8)

    class Night(ContactPolicy):
        def decide(self, c: Contact, now: datetime) -> Verdict:
            return (
                Verdict("defer", "contact_window", until)
                if now < until
                else super().decide(c, now)
            )

    m = Machine(load_plans(), Night())
    state, fx = m.start(req(contacts={"phone": "+8613800000001"}), None, NOW)
    assert not fx.dispatches and fx.records[0].outcome == "deferred"
    assert fx.timers_add[-1] == (timer_member("retry", "c1", "n1", 0, 1), until.timestamp())
    fx = m.on_timer(state, timer(state, "retry"), until)
    assert fx is not None and [d.channel for d in fx.dispatches] == ["voice"]


def test_record_ids_are_deterministic(machine: Machine) -> None:
    _a, fa = machine.start(
        req(type="repayment_due", contacts={"email": "x@example.com"}), None, NOW
    )
    _b, fb = machine.start(
        req(type="repayment_due", contacts={"email": "x@example.com"}), None, NOW
    )
    assert [r.record_id for r in fa.records] == [r.record_id for r in fb.records]
    assert len({r.record_id for r in fa.records}) == len(fa.records)


@pytest.mark.parametrize(
    ("mirror", "model"),
    [
        (messages.Dispatch, models.Dispatch),
        (messages.CommsRecord, models.CommsRecord),
        (messages.NotificationStatus, models.NotificationStatus),
        (messages.Attempt, models.Attempt),
        (messages.Requested, models.NotificationRequested),
        (messages.Contacts, models.Contacts),
        (messages.BackupContact, models.BackupContact),
    ],
)
def test_router_messages_mirror_the_contract_models(mirror: type, model: type) -> None:
    wire = {f.encode_name for f in msgspec.structs.fields(mirror)}
    assert wire == {f.alias or name for name, f in model.model_fields.items()}


def test_every_message_the_machine_writes_validates_against_the_contract(
    machine: Machine,
) -> None:
    p = profile(
        phone="+8613800000001",
        email="a@example.com",
        backup_contacts=[{"relation": "employer", "phone": "+8613800000002"}],
    )
    state, fx = machine.start(req(type="verification_callback", data={"loan_id": "L1"}), p, NOW)
    written = [fx]
    for bad in ("busy", "no_answer"):  # each schedules a call-back to the same number
        nxt = machine.on_outcome(state, outcome(state, bad), NOW)
        assert (nxt is not None and not nxt.dispatches) or bad == "busy"
        written.append(nxt)
        nxt = machine.on_timer(state, timer(state, "retry"), NOW)
        assert nxt is not None and [d.channel for d in nxt.dispatches] == ["voice"]
        written.append(nxt)
    notice = next(d for f in written for d in f.dispatches if d.template == "missed_call")
    nxt = machine.on_outcome(
        state, outcome(state, "delivered", leg=notice.leg, attempt=notice.attempt), NOW
    )
    assert nxt is not None and nxt.final is None
    written.append(nxt)
    last = machine.on_outcome(state, outcome(state, "delivered"), NOW)
    assert last is not None and last.final is not None
    written.append(last)
    checked = 0
    for f in written:
        for d in f.dispatches:
            decode(messages.encode(d), models.Dispatch)
            checked += 1
        for r in f.records:
            decode(messages.encode(r), models.CommsRecord)
            checked += 1
        if f.final is not None:
            status = decode(messages.encode(f.final), models.NotificationStatus)
            assert status.status == "delivered" and len(status.attempts) == 4
            checked += 1
    assert checked >= 10
