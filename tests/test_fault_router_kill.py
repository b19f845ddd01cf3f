"""Fault injection: the router is SIGKILLed twice during a 2,000-notification run.

Every notification must still reach exactly one final status on `notifications.status`,
and no dispatch may reach a provider twice (the sandbox ledger counts every send).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from shared.kafka import make_producer
from shared.redis import make_redis
from tests.conftest import StackFactory
from tests.router_support import Reader, header, value

N = 2000
pytestmark = [pytest.mark.timeout(420)]


def scenario(i: int) -> dict[str, Any]:
    """A mix of plain deliveries and fallbacks (busy voice, rejected push)."""
    now = datetime.now(UTC).isoformat()
    base: dict[str, Any] = {
        "schema": "notification.requested/v1",
        "id": f"k-{i:05d}",
        "customer_id": f"cust-{i % 97}",
        "occurred_at": now,
        "data": {
            "amount_due": "1280.00",
            "amount": "20000.00",
            "currency": "CNY",
            "due_date": "2026-12-01",
            "code": "604213",
        },
    }
    kind = i % 10
    if kind < 4:
        return {**base, "type": "repayment_due", "contacts": {"push_tokens": [f"tok-{i}"]}}
    if kind < 7:
        return {
            **base,
            "type": "overdue_notice",
            "contacts": {"phone": f"+86138{i:05d}0001"[:12] + "0001"},
        }
    if kind < 9:
        return {
            **base,
            "type": "loan_approved",
            "contacts": {"push_tokens": [f"invalid-{i}"], "email": f"u{i}@example.com"},
        }
    return {**base, "type": "otp", "contacts": {"phone": "+8613900001234"}}


async def wait_for_statuses(reader: Reader, topic: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len({value(m)["notification_id"] for m in reader.seen if m.topic == topic}) < count:
        if time.monotonic() > deadline:
            done = len({value(m)["notification_id"] for m in reader.seen if m.topic == topic})
            raise AssertionError(f"only {done}/{count} notifications final")
        await reader.poll()


async def test_router_sigkilled_twice_loses_and_duplicates_nothing(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(
        sandbox_time_scale=0.05,
        extra_env={"TONGDA_SCHEDULER_LEASE_S": "3", "TONGDA_LOG_LEVEL": "WARNING"},
    )
    settings = stack.settings()
    t = settings.topics
    router = stack.service("router")
    producer = make_producer(settings, "fault-test")
    await producer.start()
    try:
        async with Reader(stack.bootstrap, t.status) as reader:
            for i in range(N):
                body = scenario(i)
                await producer.send(
                    t.requested, orjson.dumps(body), key=body["customer_id"].encode()
                )
            await producer.flush()
            for kill_after in (N // 5, N // 2):
                await wait_for_statuses(reader, t.status, kill_after, timeout_s=120)
                router.kill()
                await asyncio.sleep(0)  # let the kill land before the restart
                await router.start(ready_timeout=90)
            await wait_for_statuses(reader, t.status, N, timeout_s=240)
            await reader.settle(quiet_s=3.0)
            statuses = [value(m) for m in reader.seen if m.topic == t.status]
            effects = {}
            for m in reader.seen:
                effects.setdefault(value(m)["notification_id"], []).append(
                    (header(m, "tongda-effect"), m.partition, m.offset)
                )
    finally:
        await producer.stop()

    per_id = Counter(s["notification_id"] for s in statuses)
    assert len(per_id) == N
    duplicated = {k: c for k, c in per_id.items() if c != 1}
    sample = {k: effects[k] for k in list(duplicated)[:5]}
    assert not duplicated, f"{len(duplicated)} notifications got more than one status: {sample}"
    by_status = Counter(s["status"] for s in statuses)
    assert by_status == {"delivered": N}, by_status
    fell_back = [s for s in statuses if s["type"] == "overdue_notice"]
    assert all([a["outcome"] for a in s["attempts"]] == ["busy", "delivered"] for s in fell_back)

    redis = make_redis(settings)  # the stack's Redis (or Redis Cluster)
    try:
        ledger = await redis.hgetall(f"{settings.key_prefix}sandbox:sends")
    finally:
        await redis.aclose()
    counts = Counter(int(v) for v in ledger.values())
    assert set(counts) == {1}, f"sends per dispatch: {dict(counts)}"
    expected_sends = sum(2 if i % 10 in (4, 5, 6, 7, 8) else 1 for i in range(N))
    assert len(ledger) == expected_sends
