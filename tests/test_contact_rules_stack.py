"""Contact rules end to end: broker, Redis, router and the four channel services as processes,
on a simulated clock (shared/clock.py) so nights and call-back delays pass in seconds.

* an overdue notice at 22:30 local is deferred, every service is restarted, and at 08:00
  local the call is placed once, on time; an OTP at the same moment goes out at once;
* a verification call-back to the sandbox number ending 0005 (busy twice, then answered) ends
  delivered on voice after two call-backs, with one "we tried to call you" SMS;
* after three missed calls from 08:00 the employer is called when business hours open, 09:00.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from shared.clock import Clock
from shared.kafka import make_producer
from tests.conftest import StackFactory
from tests.router_support import Reader, value
from tools.devstack import Stack

pytestmark = [pytest.mark.timeout(240)]

SH_TUESDAY_2230 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)  # 22:30 in Shanghai
SH_MONDAY_0740 = datetime(2026, 11, 29, 23, 40, tzinfo=UTC)  # Monday 07:40 in Shanghai


def stack_clock(stack: Stack) -> Clock:
    return stack.clock()


async def publish(stack: Stack, *events: dict[str, Any]) -> None:
    producer = make_producer(stack.settings(), "test-rules")
    await producer.start()
    try:
        for e in events:
            await producer.send_and_wait(
                "notifications.requested", orjson.dumps(e), key=e["customer_id"].encode()
            )
    finally:
        await producer.stop()


def event(nid: str, type_: str, at: datetime, **kw: Any) -> dict[str, Any]:
    return {
        "schema": "notification.requested/v1",
        "id": nid,
        "type": type_,
        "customer_id": f"cust-{nid}",
        "occurred_at": at.isoformat(),
        "data": {
            "loan_id": "L-9",
            "amount_due": "1200.00",
            "currency": "CNY",
            "due_date": "2026-11-20",
            "code": "1234",
        },
        **kw,
    }


def of(nid: str) -> Any:
    return lambda m: value(m).get("notification_id") == nid


async def test_night_deferral_resumes_at_0800_once_across_restarts_of_every_service(
    stack_factory: StackFactory,
) -> None:
    scale = 0.001  # 22:30 → 08:00 takes 34 real seconds
    stack = await stack_factory(
        policy_preset="cn", time_scale=scale, clock_start=SH_TUESDAY_2230, sandbox_time_scale=None
    )
    clock = stack_clock(stack)
    t = stack.settings().topics
    topics = (t.audit, t.status, t.dispatch("voice"), t.dispatch("sms"))
    async with Reader(stack.bootstrap, *topics) as r:
        now = clock.now()
        await publish(
            stack,
            event("night", "overdue_notice", now, contacts={"phone": "+8613800139999"}),
            event("otp", "otp", now, contacts={"phone": "+8613800138888"}),
        )
        (deferred,) = await r.take(t.audit, where=of("night"))
        assert value(deferred)["decision"] == (
            "deferred: contact_window until 2026-11-25T08:00:00+08:00"
        )
        (otp,) = await r.take(t.status, where=of("otp"))
        assert (value(otp)["status"], value(otp)["channel"]) == ("delivered", "sms")

        # every service restarts (SIGTERM, drain, start) while the deferral waits
        await asyncio.gather(*(svc.restart() for svc in stack.services.values()))
        due_sim = datetime(2026, 11, 25, 0, 0, tzinfo=UTC).timestamp()
        due_real = clock.origin_epoch_s + (due_sim - SH_TUESDAY_2230.timestamp()) * scale
        assert clock.epoch_s() < due_sim, "the restarts took longer than the night"

        (status,) = await r.take(t.status, where=of("night"), timeout_s=60)
        assert (value(status)["status"], value(status)["channel"]) == ("delivered", "voice")
        await r.settle(1.0)
        calls = [m for m in r.seen if m.topic == t.dispatch("voice") and of("night")(m)]
        assert len(calls) == 1
        late_s = calls[0].timestamp / 1000 - due_real
        assert -0.05 <= late_s <= 1.0, f"placed {late_s:+.2f} s from 08:00 local"
        assert len([m for m in r.seen if m.topic == t.status and of("night")(m)]) == 1


async def test_call_backs_by_outcome_and_the_employer_in_business_hours(
    stack_factory: StackFactory,
) -> None:
    # One real second is 17 simulated minutes: processing latency stays well inside the
    # windows while a 15-minute call-back takes 0.9 s.
    scale = 0.001
    stack = await stack_factory(
        policy_preset="cn", time_scale=scale, clock_start=SH_MONDAY_0740, sandbox_time_scale=None
    )
    clock = stack_clock(stack)
    t = stack.settings().topics
    topics = (t.audit, t.status, t.dispatch("voice"), t.dispatch("sms"))
    async with Reader(stack.bootstrap, *topics) as r:
        now = clock.now()
        await publish(
            stack,
            event("cb", "verification_callback", now, contacts={"phone": "+8613800130005"}),
            event(
                "boss",
                "verification_callback",
                now,
                contacts={
                    "phone": "+8613800130001",  # busy on every call
                    "backup_contacts": [{"relation": "employer", "phone": "+8613911112222"}],
                },
            ),
        )
        (cb,) = await r.take(t.status, where=of("cb"), timeout_s=60)
        s = value(cb)
        assert (s["status"], s["channel"]) == ("delivered", "voice")
        voice = [a["outcome"] for a in s["attempts"] if a["channel"] == "voice"]
        assert voice == ["busy", "busy", "delivered"]
        sms = [a["outcome"] for a in s["attempts"] if a["channel"] == "sms"]
        assert sms in (["delivered"], [])  # the missed-call SMS (its outcome may come later)
        notices = [m for m in r.seen if m.topic == t.dispatch("sms") and of("cb")(m)]
        assert [value(n)["template"] for n in notices] == ["missed_call"]

        (boss,) = await r.take(t.status, where=of("boss"), timeout_s=90)
        calls = [value(m) for m in r.seen if m.topic == t.dispatch("voice") and of("boss")(m)]
        assert [c["recipient_kind"] for c in calls] == ["borrower"] * 3 + ["backup_contact"]
        first_call = datetime.fromisoformat(calls[0]["dispatched_at"])
        assert first_call >= datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # not before 08:00 local
        employer_call = datetime.fromisoformat(calls[-1]["dispatched_at"])
        late_s = employer_call.timestamp() - datetime(2026, 11, 30, 1, 0, tzinfo=UTC).timestamp()
        assert 0 <= late_s * scale <= 1.0  # 09:00 local, within 1 real second
        deferrals = [
            value(m)["decision"]
            for m in r.seen
            if m.topic == t.audit and of("boss")(m) and value(m).get("outcome") == "deferred"
        ]
        assert deferrals == [
            "deferred: contact_window until 2026-11-30T08:00:00+08:00",
            "deferred: business_hours until 2026-11-30T09:00:00+08:00",
        ]
        assert value(boss)["status"] == "delivered"


@pytest.mark.slow  # a router restart inside a 15-minute call-back (30 real seconds)
async def test_a_call_back_pending_across_a_router_restart_is_placed_once(
    stack_factory: StackFactory,
) -> None:
    scale = 0.03  # 15 simulated minutes: 27 real seconds, longer than a router restart
    start = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # Tuesday 10:00 in Shanghai
    stack = await stack_factory(
        policy_preset="cn", time_scale=scale, clock_start=start, sandbox_time_scale=None
    )
    clock = stack_clock(stack)
    t = stack.settings().topics
    async with Reader(stack.bootstrap, t.audit, t.status, t.dispatch("voice")) as r:
        # ...0005: busy on the first two calls, answered on the third
        await publish(
            stack,
            event(
                "cbr", "verification_callback", clock.now(), contacts={"phone": "+8613800130005"}
            ),
        )
        busy = lambda m: of("cbr")(m) and value(m).get("outcome") == "busy"  # noqa: E731
        await r.take(t.audit, where=busy, timeout_s=30)  # the first call was busy
        (first,) = await r.take(t.dispatch("voice"), where=of("cbr"))
        called_at = datetime.fromisoformat(value(first)["dispatched_at"])
        await stack.services["router"].restart()
        assert clock.now() < called_at + timedelta(minutes=15), "restart outlasted the call-back"
        (status,) = await r.take(t.status, where=of("cbr"), timeout_s=150)
        await r.settle(2.0)
    s = value(status)
    assert (s["status"], s["channel"]) == ("delivered", "voice")
    calls = [value(m) for m in r.seen if m.topic == t.dispatch("voice") and of("cbr")(m)]
    assert [c["attempt"] for c in calls] == [1, 2, 3]  # each call once, none lost or repeated
    gaps = [
        datetime.fromisoformat(b["dispatched_at"]) - datetime.fromisoformat(a["dispatched_at"])
        for a, b in itertools.pairwise(calls)
    ]
    assert all(g >= timedelta(minutes=15) for g in gaps), gaps
    assert len([m for m in r.seen if m.topic == t.status and of("cbr")(m)]) == 1
