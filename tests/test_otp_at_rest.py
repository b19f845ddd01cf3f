"""An OTP code is not kept readable in Redis once its notification is final (issue 9), on the
real broker and Redis; other types keep their data (it may serve later, e.g. inquiries)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from tests.router_support import Harness, Reader, engine_harness, value

CODE = "604213"


async def everything_under(redis: Redis, prefix: str) -> bytes:
    """Every value stored under `prefix`, of whatever type, concatenated."""
    out = []
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            out.append(await redis.get(key) or b"")
        elif kind == "hash":
            out += [k + v for k, v in (await redis.hgetall(key)).items()]
        elif kind == "list":
            out += await redis.lrange(key, 0, -1)
        elif kind == "set":
            out += list(await redis.smembers(key))
        elif kind == "zset":
            out += await redis.zrange(key, 0, -1)
        out.append(key)
    return b"\n".join(out)


async def deliver(h: Harness, r: Reader, nid: str, type_: str, data: dict[str, Any]) -> None:
    t = h.settings.topics
    await h.publish(
        t.requested,
        {
            "schema": "notification.requested/v1",
            "id": nid,
            "type": type_,
            "customer_id": "c1",
            "occurred_at": datetime.now(UTC).isoformat(),
            "data": data,
            "contacts": {"phone": "+8613800001234"},
        },
    )
    (sms,) = await r.take(t.dispatch("sms"), where=lambda m: value(m)["notification_id"] == nid)
    d = value(sms)
    assert d["data"] == data  # the channel gets what it needs to render
    await h.publish(
        t.router_inbox,
        {
            "schema": "tongda.outcome/v1",
            "notification_id": nid,
            "customer_id": "c1",
            "channel": "sms",
            "leg": d["leg"],
            "attempt": d["attempt"],
            "outcome": "delivered",
            "provider": "test",
            "at": datetime.now(UTC).isoformat(),
        },
    )
    await r.take(t.status, where=lambda m: value(m)["notification_id"] == nid)


async def test_an_otp_code_is_gone_from_redis_once_final(broker: str, redis_server: str) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        async with Reader(broker, t.dispatch("sms"), t.status) as r:
            await deliver(h, r, "otp-1", "otp", {"code": CODE})
            stored = await everything_under(h.redis, h.settings.key_prefix)
            assert b"otp-1" in stored  # the state is kept (a repeated id is recognised) ...
            assert CODE.encode() not in stored  # ... without the code
            state = orjson.loads(await h.redis.get(h.store.keys.state("otp-1", "c1")) or b"{}")
            assert state["status"] == "delivered" and state.get("data", {}) == {}

            data = {"amount_due": "1280.00", "currency": "CNY", "due_date": "2026-12-01"}
            await deliver(h, r, "rep-1", "repayment_due", data)
            state = orjson.loads(await h.redis.get(h.store.keys.state("rep-1", "c1")) or b"{}")
            assert state["data"] == data
