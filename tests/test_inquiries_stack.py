"""Inquiries end to end on real processes (broker, Redis, router, channel services), borrowers
writing in through the sandbox's `POST /sandbox/inbound`:

* an SLA deadline pending while the router restarts: the level-2 escalation is published
  once, after the deadline (`slow`: `make test-all`, and `.ci/run`);
* "退订" applied within 5 s while the router drains a backlog of notifications: the
  `customer.preference/v1` is out, and the borrower's next reminder skips SMS.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from redis.asyncio import Redis

from shared.addresses import address_hash
from shared.config import RouterSettings
from shared.kafka import make_producer
from tests.conftest import StackFactory
from tests.router_support import Reader, value
from tools.devstack import Stack

pytestmark = [pytest.mark.timeout(240)]

SH_TUESDAY_1000 = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
PHONE = "+8613800004321"


def profile(cid: str, at: datetime) -> dict[str, Any]:
    return {
        "schema": "customer.profile/v1",
        "customer_id": cid,
        "phone": PHONE,
        "email": "wang.fang@example.com",
        "locale": "zh-CN",
        "timezone": "Asia/Shanghai",
        "updated_at": (at - timedelta(days=1)).isoformat(),
    }


def reminder(nid: str, cid: str, at: datetime) -> dict[str, Any]:
    return {
        "schema": "notification.requested/v1",
        "id": nid,
        "type": "repayment_due",
        "customer_id": cid,
        "occurred_at": at.isoformat(),
        "data": {"amount_due": "800.00", "currency": "CNY", "due_date": "2026-12-01"},
    }


async def publish(stack: Stack, topic: str, items: list[tuple[str, dict[str, Any]]]) -> None:
    producer = make_producer(stack.settings(), "test-inquiries")
    await producer.start()
    try:
        sent = [await producer.send(topic, orjson.dumps(v), key=k.encode()) for k, v in items]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def indexed(stack: Stack, cid: str) -> None:
    """Wait until the router has indexed the borrower's phone (from the profile)."""
    s = RouterSettings(kafka_bootstrap=stack.bootstrap, redis_url=stack.redis_url)
    key = s.address_hash_key.get_secret_value().encode()
    name = f"{s.key_prefix}sx:{address_hash(key, PHONE)}"
    redis = Redis.from_url(stack.redis_url)
    try:
        deadline = time.monotonic() + 30
        while await redis.get(name) != cid.encode():
            assert time.monotonic() < deadline, "the profile was never indexed"
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def send_sms(stack: Stack, text: str) -> str:
    async with ClientSession() as http:
        resp = await http.post(
            f"{stack.services['sms'].url}/sandbox/inbound", json={"from": PHONE, "text": text}
        )
        assert resp.status == 202, await resp.text()
        inquiry_id: str = (await resp.json())["inquiry_id"]
        return inquiry_id


@pytest.mark.slow  # a router restart and a 36 s deadline
async def test_level_2_escalation_fires_once_across_a_router_restart(
    stack_factory: StackFactory,
) -> None:
    scale = 0.04  # 15 minutes: 36 real seconds (a router restart takes ~10-20)
    stack = await stack_factory(
        policy_preset="cn", time_scale=scale, clock_start=SH_TUESDAY_1000, sandbox_time_scale=None
    )
    t = stack.settings().topics
    now = stack.clock().now()
    await publish(stack, t.profiles, [("c-sla", profile("c-sla", now))])
    await indexed(stack, "c-sla")
    async with Reader(stack.bootstrap, t.escalated) as r:
        inquiry_id = await send_sms(stack, "有人用我的身份证贷款了")
        (first,) = await r.take(t.escalated, timeout_s=30)
        e = value(first)
        assert (e["inquiry_id"], e["tier"], e["intent"], e["level"]) == (
            inquiry_id,
            "urgent",
            "fraud",
            1,
        )
        respond_by = datetime.fromisoformat(e["respond_by"])
        # the router restarts (SIGTERM, drain, start) while the deadline is pending
        await stack.services["router"].restart()
        assert stack.clock().now() < respond_by, "the restart took longer than the SLA"
        (second,) = await r.take(t.escalated, where=lambda m: value(m)["level"] == 2, timeout_s=60)
        assert stack.clock().now() >= respond_by
        await r.settle(3.0)  # 3 real s: 5 simulated minutes of scheduler ticks
    assert value(second)["inquiry_id"] == inquiry_id
    assert [value(m)["level"] for m in r.seen] == [1, 2]


async def test_opt_out_applies_within_5_s_while_the_router_drains_a_backlog(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(policy_preset="cn", clock_start=SH_TUESDAY_1000)
    t = stack.settings().topics
    now = stack.clock().now()
    await publish(stack, t.profiles, [("c-stop", profile("c-stop", now))])
    await indexed(stack, "c-stop")
    load = [
        (
            f"c-load-{i}",
            reminder(f"n-load-{i}", f"c-load-{i}", now)
            | {"contacts": {"push_tokens": [f"tok-{i}"]}},
        )
        for i in range(3000)
    ]
    async with Reader(stack.bootstrap, t.preferences, t.status) as r:
        await publish(stack, t.requested, load)
        started = time.monotonic()
        await send_sms(stack, "退订")
        (pref,) = await r.take(t.preferences, timeout_s=30)
        took_s = time.monotonic() - started
        backlog_left = 3000 - len([m for m in r.seen if m.topic == t.status])
        assert took_s <= 5.0, f"opt-out published after {took_s:.1f} s"
        p = value(pref)
        assert (p["customer_id"], p["channel"], p["state"], p["source"]) == (
            "c-stop",
            "sms",
            "opted_out",
            "inbound_keyword",
        )
        await publish(stack, t.requested, [("c-stop", reminder("n-stop", "c-stop", now))])
        (status,) = await r.take(
            t.status, where=lambda m: value(m)["notification_id"] == "n-stop", timeout_s=90
        )
    s = value(status)
    sms = [a["outcome"] for a in s["attempts"] if a["channel"] == "sms"]
    assert sms == ["suppressed"] and (s["status"], s["channel"]) == ("delivered", "email")
    print(f"opt-out out after {took_s:.2f} s with {backlog_left} notifications still to finish")
