"""Contact rules through the router's batch engine on the real broker and Redis: the ledger
enforced atomically when two routers decide for one borrower at once, deferral records, and
the ledger erased with the customer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.router.ledger import VERSION_MEMBER, member
from tests.router_support import Reader, engine_harness, value

SHANGHAI_TUESDAY_10H = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
SHANGHAI_TUESDAY_2230 = datetime(2026, 11, 24, 14, 30, tzinfo=UTC)  # 22:30 in Shanghai


def request(nid: str, cid: str, at: datetime, **kw: Any) -> bytes:
    body: dict[str, Any] = {
        "schema": "notification.requested/v1",
        "id": nid,
        "type": "overdue_notice",
        "customer_id": cid,
        "occurred_at": at.isoformat(),
        "data": {
            "loan_id": "L1",
            "amount_due": "1200.00",
            "currency": "CNY",
            "due_date": "2026-11-20",
            "code": "246810",
        },
        "contacts": {"phone": "+8613800138000"},
    }
    body.update(kw)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def record(topic: str, offset: int, raw: bytes, key: str) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, 0, 0, key.encode(), raw, None, len(key), len(raw), [])


async def test_two_routers_racing_never_take_more_than_the_cap(
    broker: str, redis_server: str
) -> None:
    """Six collection calls already made on debt L1: exactly one more call may be placed,
    however many notifications two routers decide at the same moment."""
    clock = {"clock_start": SHANGHAI_TUESDAY_10H, "time_scale": 1.0}
    async with engine_harness(broker, redis_server, run=False, policy="cn", **clock) as a:
        async with engine_harness(broker, redis_server, run=False, policy="cn", **clock) as b:
            # the second router shares the first's topics and keys: the same deployment
            b.engine.topics = a.engine.topics
            b.engine.store = a.engine.store
            b.engine.outbox = a.engine.outbox
            t = a.settings.topics
            now_s = a.engine.clock.epoch_s()
            await a.redis.zadd(
                a.store.keys.ledger("c1"),
                {
                    member("voice", "attempt", "L1", f"old{i}:0:1"): now_s - 3600 * (i + 1)
                    for i in range(6)
                },
            )
            at = a.engine.clock.now()
            tp = TopicPartition(t.requested, 0)
            batches = [
                {tp: [record(t.requested, i, request(f"race{i}", "c1", at), "c1")]}
                for i in range(12)
            ]
            # Force the race: every decision reads the ledger before any transition is
            # written (the first read of each batch waits until all have read).
            store = a.engine.store
            read = store.read_ledgers
            barrier = asyncio.Barrier(len(batches))
            first_reads = {"left": len(batches)}

            async def read_then_wait(cids: Any, now_s: float) -> Any:
                views = await read(cids, now_s)
                if first_reads["left"] > 0:
                    first_reads["left"] -= 1
                    await barrier.wait()
                return views

            store.read_ledgers = read_then_wait  # type: ignore[method-assign]
            async with Reader(broker, t.dispatch("voice"), t.audit) as r:
                await asyncio.gather(
                    *((a if i % 2 else b).engine.process(batch) for i, batch in enumerate(batches))
                )
                await r.settle(0.5)
            calls = [m for m in r.seen if m.topic == t.dispatch("voice")]
            capped = [
                value(m)
                for m in r.seen
                if m.topic == t.audit
                and value(m).get("decision") == "suppressed: voice_debt_attempt_cap"
            ]
            assert len(calls) == 1, [value(c)["notification_id"] for c in calls]
            assert len(capped) == 11
            attempts = await a.redis.zrange(a.store.keys.ledger("c1"), 0, -1)
            assert sum(1 for m in attempts if b'"attempt"' in m) == 7


async def test_deferred_at_night_with_the_decision_in_the_audit(
    broker: str, redis_server: str
) -> None:
    clock = {"clock_start": SHANGHAI_TUESDAY_2230, "time_scale": 1.0}
    async with engine_harness(broker, redis_server, policy="cn", **clock) as h:
        t = h.settings.topics
        at = h.engine.clock.now()
        async with Reader(broker, t.audit, t.dispatch("sms"), t.dispatch("voice")) as r:
            await h.publish(t.requested, orjson.loads(request("night", "c2", at)), key="c2")
            otp = request("otp", "c3", at, type="otp")
            await h.publish(t.requested, orjson.loads(otp), key="c3")
            (deferred,) = await r.take(
                t.audit, where=lambda m: value(m)["notification_id"] == "night"
            )
            assert value(deferred)["decision"] == (
                "deferred: contact_window until 2026-11-25T08:00:00+08:00"
            )
            assert value(deferred)["outcome"] == "deferred"
            (sms,) = await r.take(t.dispatch("sms"))
            assert value(sms)["notification_id"] == "otp"  # transactional: at once
            await r.settle(0.3)
            assert not [m for m in r.seen if m.topic == t.dispatch("voice")]
        due = await h.redis.zrange(h.store.keys.timers("c2"), 0, -1, withscores=True)
        resume = [s for m, s in due if b'"retry"' in m and b'"night"' in m]
        assert resume == [datetime(2026, 11, 25, 0, 0, tzinfo=UTC).timestamp()]


async def test_erasing_a_customer_erases_the_ledger(broker: str, redis_server: str) -> None:
    async with engine_harness(broker, redis_server, run=False, policy="cn") as h:
        keys = h.store.keys
        await h.redis.zadd(
            keys.ledger("gone"),
            {member("voice", "attempt", "L1", "x:0:1"): 1.0, VERSION_MEMBER: -3.0},
        )
        tp = TopicPartition(h.settings.topics.profiles, 0)
        tombstone = ConsumerRecord(tp.topic, 0, 0, 0, 0, b"gone", None, None, 4, -1, [])
        await h.engine.process({tp: [tombstone]})
        assert not await h.redis.exists(keys.ledger("gone"))


async def test_quiet_hours_opt_out_and_third_party_through_the_broker(
    broker: str, redis_server: str
) -> None:
    """At 10:00 in Shanghai: a borrower whose quiet hours run to 11:00 is deferred to 11:00;
    an opted-out SMS is suppressed and the plan moves on to email (a transactional OTP still
    goes out by SMS); a collection step aimed at a backup contact is suppressed."""
    clock = {"clock_start": SHANGHAI_TUESDAY_10H, "time_scale": 1.0}
    async with engine_harness(broker, redis_server, policy="cn", **clock) as h:
        t = h.settings.topics
        at = h.engine.clock.now()
        profiles = {
            "quiet": {"quiet_hours": [{"from": "09:00", "to": "11:00"}]},
            "optout": {"opted_out_channels": ["sms"], "email": "b@example.com"},
            "otp": {"opted_out_channels": ["sms"]},
        }
        for cid, extra in profiles.items():
            body = {
                "schema": "customer.profile/v1",
                "customer_id": cid,
                "phone": "+8613800139999",
                "timezone": "Asia/Shanghai",
                **extra,
            }
            await h.publish(t.profiles, body, key=cid)
        keys = [h.store.keys.profile(cid) for cid in profiles]
        for _ in range(200):  # the router stores profiles before it routes what follows
            if await h.redis.exists(*keys) == len(keys):
                break
            await asyncio.sleep(0.05)
        async with Reader(broker, t.audit, t.dispatch("email"), t.dispatch("sms")) as r:
            await h.publish(
                t.requested, orjson.loads(request("q", "quiet", at, contacts=None)), key="quiet"
            )
            reminder = request("o", "optout", at, type="repayment_due", contacts=None)
            await h.publish(t.requested, orjson.loads(reminder), key="optout")
            otp = request("p", "otp", at, type="otp", contacts=None)
            await h.publish(t.requested, orjson.loads(otp), key="otp")
            (quiet,) = await r.take(t.audit, where=lambda m: value(m)["notification_id"] == "q")
            assert value(quiet)["decision"] == (
                "deferred: quiet_hours until 2026-11-24T11:00:00+08:00"
            )
            (email,) = await r.take(t.dispatch("email"))
            assert value(email)["notification_id"] == "o"
            suppressed = await r.take(
                t.audit,
                where=lambda m: (
                    value(m)["notification_id"] == "o" and value(m).get("outcome") == "suppressed"
                ),
                count=2,
            )  # push (no token) and sms (opted out)
            assert {value(m)["decision"] for m in suppressed} == {
                "suppressed: no_address",
                "suppressed: opted_out",
            }
            (sms,) = await r.take(t.dispatch("sms"))
            assert value(sms)["notification_id"] == "p"  # transactional: not bound by it


async def test_collection_never_reaches_a_backup_contact_through_the_broker(
    broker: str, redis_server: str, tmp_path: Any
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(
        "plans:\n"
        "  overdue_notice:\n"
        "    category: collection\n"
        "    steps:\n"
        "      - {channel: voice, target: backup_contacts, relations: [spouse]}\n"
        "      - {channel: sms}\n"
    )
    clock = {"clock_start": SHANGHAI_TUESDAY_10H, "time_scale": 1.0}
    async with engine_harness(broker, redis_server, plans=plans, policy="cn", **clock) as h:
        t = h.settings.topics
        at = h.engine.clock.now()
        backups = [{"relation": "spouse", "phone": "+8613911112222"}]
        body = request(
            "tp", "c9", at, contacts={"phone": "+8613800139999", "backup_contacts": backups}
        )
        async with Reader(broker, t.audit, t.dispatch("voice"), t.dispatch("sms")) as r:
            await h.publish(t.requested, orjson.loads(body), key="c9")
            (sms,) = await r.take(t.dispatch("sms"))
            assert value(sms)["notification_id"] == "tp"
            (audit,) = await r.take(
                t.audit, where=lambda m: value(m).get("decision") == "suppressed: third_party"
            )
            assert value(audit)["notification_id"] == "tp"
            await r.settle(0.3)
            assert not [m for m in r.seen if m.topic == t.dispatch("voice")]
