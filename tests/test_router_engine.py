"""The router's batch engine on the real broker and Redis: routing, idempotency, dead
letters, profiles, step timeouts through the durable scheduler, outbox recovery."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition

from services.router.outbox import EFFECT_HEADER, OutRecord
from services.router.state import decode_state
from shared.signing import Signer
from tests.router_support import Harness, Reader, engine_harness, header, value

NOW = datetime.now(UTC).isoformat()


DATA = {  # every variable the shipped templates use, for any type
    "amount_due": "1280.00",
    "amount": "20000.00",
    "currency": "CNY",
    "due_date": "2026-12-01",
    "code": "604213",
}


def event(nid: str, type_: str = "overdue_notice", cid: str = "c1", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": "notification.requested/v1",
        "id": nid,
        "type": type_,
        "customer_id": cid,
        "occurred_at": NOW,
        "data": DATA,
    }
    body.update(kw)
    return body


async def answer(h: Harness, dispatch: dict[str, Any], outcome: str) -> None:
    await h.publish(
        h.settings.topics.router_inbox,
        {
            "schema": "tongda.outcome/v1",
            "notification_id": dispatch["notification_id"],
            "customer_id": dispatch["customer_id"],
            "channel": dispatch["channel"],
            "leg": dispatch["leg"],
            "attempt": dispatch["attempt"],
            "outcome": outcome,
            "provider": "test",
            "at": datetime.now(UTC).isoformat(),
        },
        key=dispatch["customer_id"],
    )


async def test_busy_voice_falls_back_and_everything_is_recorded(
    broker: str, redis_server: str
) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        async with Reader(broker, t.dispatch("voice"), t.dispatch("sms"), t.status, t.audit) as r:
            await h.publish(t.requested, event("n1", contacts={"phone": "+8613800000001"}))
            (voice,) = await r.take(t.dispatch("voice"))
            assert value(voice)["recipient"] == "+8613800000001"
            await answer(h, value(voice), "busy")
            (sms,) = await r.take(t.dispatch("sms"))
            await answer(h, value(sms), "delivered")
            (status,) = await r.take(t.status)
            s = value(status)
            assert (s["status"], s["channel"]) == ("delivered", "sms")
            assert [(a["channel"], a["outcome"]) for a in s["attempts"]] == [
                ("voice", "busy"),
                ("sms", "delivered"),
            ]
            assert s["attempts"][0]["recipient"] == "+86138****0001"
            audit = await r.take(t.audit, 2)
            assert [value(a)["outcome"] for a in audit] == ["busy", "delivered"]
            assert status.key == b"c1"
        keys = h.store.keys
        timeline = await h.redis.lrange(keys.timeline("c1"), 0, -1)
        assert [orjson.loads(x)["outcome"] for x in timeline] == ["delivered", "busy"]
        assert 0 < await h.redis.ttl(keys.state("n1", "c1")) <= h.settings.retention_s
        assert await h.redis.zcard(keys.timers("c1")) == 0
        assert await h.redis.hlen(keys.outbox(t.router_inbox, 0, "c1")) == 0


async def test_same_id_twice_is_one_notification(broker: str, redis_server: str) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        async with Reader(broker, t.dispatch("email"), t.status) as r:
            body = event("dup", "loan_approved", contacts={"email": "a@example.com"})
            await h.publish(t.requested, body)
            await h.publish(t.requested, body)
            (email,) = await r.take(t.dispatch("email"))
            await answer(h, value(email), "delivered")
            await h.publish(t.requested, body)  # again after it is final
            await r.take(t.status)
            await r.settle()
            assert len([m for m in r.seen if m.topic == t.dispatch("email")]) == 1
            assert len([m for m in r.seen if m.topic == t.status]) == 1


BAD = [
    (b"{not json", "malformed_json"),
    (orjson.dumps([1, 2]), "malformed_json"),
    (orjson.dumps(event("w", priority=5)), "invalid_fields"),
    (orjson.dumps({k: v for k, v in event("m").items() if k != "customer_id"}), "invalid_fields"),
    (orjson.dumps(event("u", "no_such_type")), "unknown_type"),
    (
        orjson.dumps({**event("v2"), "schema": "notification.requested/v2"}),
        "unknown_schema_version",
    ),
    (orjson.dumps(event("big", data={"blob": "x" * (1024 * 1024)})), "too_large"),
]


async def test_bad_events_are_dead_lettered_and_neighbours_routed(
    broker: str, redis_server: str
) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        async with Reader(broker, t.deadletter, t.dispatch("push")) as r:
            await h.publish(
                t.requested, event("before", "loan_approved", contacts={"push_tokens": ["tok-1"]})
            )
            for raw, _ in BAD:
                await h.publish(t.requested, raw)
            await h.publish(
                t.requested, event("after", "loan_approved", contacts={"push_tokens": ["tok-2"]})
            )
            dead = await r.take(t.deadletter, len(BAD))
            assert [header(d, "error") for d in dead] == [code for _, code in BAD]
            assert [d.value for d in dead] == [raw for raw, _ in BAD]
            for d in dead:
                assert header(d, "source-topic") == t.requested
                assert header(d, "source-offset") is not None
                assert header(d, "error-detail")
            assert "priority" in (header(dead[2], "error-detail") or "")
            assert "customer_id" in (header(dead[3], "error-detail") or "")
            pushes = await r.take(t.dispatch("push"), 2)
            assert {value(p)["notification_id"] for p in pushes} == {"before", "after"}


async def test_profiles_feed_routing_and_tombstones_erase(broker: str, redis_server: str) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        async with Reader(broker, t.dispatch("voice"), t.deadletter) as r:
            await h.publish(
                t.profiles,
                {
                    "schema": "customer.profile/v1",
                    "customer_id": "c9",
                    "phone": "+8613800000777",
                    "timezone": "Asia/Shanghai",
                },
                key="c9",
            )
            await h.publish(
                t.profiles,
                {"schema": "customer.profile/v1", "customer_id": "c9", "timezone": "Mars/Olympus"},
                key="c9",
            )
            await h.publish(t.requested, event("p1", cid="c9"), key="c9")
            (voice,) = await r.take(t.dispatch("voice"))
            assert value(voice)["recipient"] == "+8613800000777"
            (dead,) = await r.take(t.deadletter)
            assert "timezone" in (header(dead, "error-detail") or "")
        keys = h.store.keys
        assert await h.redis.exists(keys.state("p1", "c9"), keys.profile("c9")) == 2
        async with Reader(broker, t.dispatch("voice")) as r2:
            await h.publish(t.profiles, None, key="c9")
            # Same key, same partitions: once a later request is routed, the tombstone is done.
            await h.publish(
                t.profiles,
                {"schema": "customer.profile/v1", "customer_id": "c9", "phone": "+8613800000888"},
                key="c9",
            )
            await h.publish(t.requested, event("p2", cid="c9"), key="c9")
            await r2.take(t.dispatch("voice"), where=lambda m: value(m)["notification_id"] == "p2")
        assert await h.redis.exists(keys.state("p1", "c9")) == 0
        assert await h.redis.smembers(keys.customer_notifications("c9")) == {b"p2"}


async def test_step_timeout_fires_from_the_scheduler(
    broker: str, redis_server: str, tmp_path: Path
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(
        "plans:\n  otp:\n    category: transactional\n    steps:\n"
        "      - {channel: sms, timeout_s: 0.3}\n      - {channel: voice, timeout_s: 30}\n"
    )
    async with engine_harness(broker, redis_server, plans=plans) as h:
        t = h.settings.topics
        async with Reader(broker, t.dispatch("sms"), t.dispatch("voice")) as r:
            await h.publish(t.requested, event("to", "otp", contacts={"phone": "+8613800000004"}))
            await r.take(t.dispatch("sms"))
            fired = 0
            while not [m for m in r.seen if m.topic == t.dispatch("voice")]:
                fired += await h.scheduler.tick()
                await r.poll()
            assert fired == 1
            raw = await h.redis.get(h.store.keys.state("to", "c1"))
            state = decode_state(raw)
            assert state.attempts[0].outcome == "failed"
            assert "step timeout" in (state.attempts[0].detail or "")


@pytest.mark.parametrize("already_sent", [False, True])
async def test_outbox_recovery_sends_exactly_what_is_missing(
    broker: str, redis_server: str, already_sent: bool
) -> None:
    """A crash between the state write and the broker's ack: on assignment the outbox entry is
    sent if the broker lacks it, and not sent again if it has it."""
    from aiokafka.structs import TopicPartition

    async with engine_harness(broker, redis_server, run=False) as h:
        t = h.settings.topics
        tp = TopicPartition(t.requested, 0)
        await h.outbox.recover([tp])  # first owner: baseline positions
        rec = OutRecord("n7/1/0", t.status, b"c1", b'{"status":"delivered"}')
        box = h.store.keys.outbox(tp.topic, tp.partition, "c1")  # the outbox of c1's group
        await h.redis.hset(box, rec.effect_id, rec.pack())
        if already_sent:
            await h.producer.send_and_wait(
                rec.topic, rec.value, key=rec.key, headers=[(EFFECT_HEADER, rec.effect_id.encode())]
            )
        resent = await h.outbox.recover([tp])
        assert resent == (0 if already_sent else 1)
        async with Reader(broker, t.status) as r:
            await r.take(t.status)
            await r.settle()
            assert len(r.seen) == 1 and header(r.seen[0], EFFECT_HEADER) == "n7/1/0"
        assert await h.redis.hlen(h.store.keys.outbox(tp.topic, tp.partition, "c1")) == 0


async def test_a_record_appended_whose_ack_was_lost_is_not_sent_again(
    broker: str, redis_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A produce request that times out may have been appended (a paused broker processes
    it when it resumes: the first 100,000-notification fault campaign had 119 notifications
    with two final statuses so): before sending again, the outbox looks for the records on
    the broker and sends only what it lacks."""
    from aiokafka.errors import RequestTimedOutError
    from aiokafka.structs import TopicPartition

    async with engine_harness(broker, redis_server, run=False) as h:
        t = h.settings.topics
        tp = TopicPartition(t.requested, 1)
        await h.outbox.recover([tp])  # the output partitions' ends: where records land after
        appended = OutRecord("n8/1/0", t.status, b"c8", b'{"status":"delivered"}')
        lost = OutRecord("n9/1/0", t.status, b"c9", b'{"status":"failed"}')
        real = h.outbox._produce_batched
        calls: list[list[str]] = []

        async def ack_lost_once(records: list[OutRecord]) -> list[object]:
            calls.append([r.effect_id for r in records])
            if len(calls) > 1:
                return await real(records)  # type: ignore[return-value]
            # the first request: one record reaches the broker but its answer is lost,
            # the other never arrives
            await real([appended])
            return [RequestTimedOutError() for _ in records]

        monkeypatch.setattr(h.outbox, "_produce_batched", ack_lost_once)
        await h.outbox.send([(tp, appended), (tp, lost)])
        assert calls == [["n8/1/0", "n9/1/0"], ["n9/1/0"]]  # only the missing one again
        async with Reader(broker, t.status) as r:
            await r.take(t.status, 2)
            await r.settle()
            effects = sorted(header(m, EFFECT_HEADER) or "" for m in r.seen)
        assert effects == ["n8/1/0", "n9/1/0"]  # each exactly once


async def test_address_lists_are_bounded_with_a_dead_letter_naming_the_field(
    broker: str, redis_server: str
) -> None:
    """Poison pill 4: every address becomes a leg, so one profile with 10,000 phones would
    make 10,000 calls (and 5,000 push tokens overflowed apply.lua after writing the state)."""
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        phones = [f"+86138{i:08d}" for i in range(11)]
        profile = {"schema": "customer.profile/v1", "customer_id": "many", "alt_phones": phones}
        tokens = [f"tok-{i}" for i in range(5000)]
        async with Reader(broker, t.deadletter, t.dispatch("push")) as r:
            await h.publish(t.profiles, profile, key="many")
            await h.publish(
                t.requested, event("tokens", "loan_approved", contacts={"push_tokens": tokens})
            )
            await h.publish(
                t.requested, event("ok", "loan_approved", contacts={"push_tokens": tokens[:10]})
            )
            dead = await r.take(t.deadletter, 2)
            details = {header(d, "error-detail") or "" for d in dead}
            assert any(d.startswith("alt_phones:") and "at most 10" in d for d in details)
            assert any(d.startswith("contacts.push_tokens:") for d in details)
            pushes = await r.take(t.dispatch("push"))
            assert {value(p)["notification_id"] for p in pushes} == {"ok"}


async def test_erasing_a_customer_ends_its_notifications_in_flight(
    broker: str, redis_server: str
) -> None:
    """Poison pill 7: a tombstone while a call is in flight ends the notification with one
    final status (`suppressed`, decision `suppressed: erased`), never silence."""
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        async with Reader(broker, t.dispatch("voice"), t.status, t.audit) as r:
            await h.publish(
                t.requested,
                event("gone1", cid="gone", contacts={"phone": "+8613800000009"}),
                key="gone",
            )
            (call,) = await r.take(t.dispatch("voice"))
            await h.publish(t.profiles, None, key="gone")
            (status,) = await r.take(
                t.status, where=lambda m: value(m)["notification_id"] == "gone1"
            )
            assert (value(status)["status"], value(status)["channel"]) == ("suppressed", None)
            (record,) = await r.take(
                t.audit, where=lambda m: value(m).get("decision") == "suppressed: erased"
            )
            assert value(record)["notification_id"] == "gone1"
            await answer(h, value(call), "delivered")  # the call's outcome comes later: stale
            await r.settle(0.5)
            assert len([m for m in r.seen if m.topic == t.status]) == 1
        assert not await h.redis.exists(h.store.keys.state("gone1", "gone"))


async def test_a_state_stored_as_a_hash_before_states_were_strings_moves_on(
    broker: str, redis_server: str
) -> None:
    """Upgrade path: a notification whose state was written as a hash (v, s) by an earlier
    router is read, advanced and written back as a string by the next transition."""
    async with engine_harness(broker, redis_server, run=False) as h:
        t = h.settings.topics
        req_tp = TopicPartition(t.requested, 0)
        body = orjson.dumps(event("old1", contacts={"phone": "+8613800000001"}))
        await h.engine.process({req_tp: [record(req_tp, 0, b"c1", body)]})
        key = h.store.keys.state("old1", "c1")
        raw = await h.redis.get(key)
        assert raw is not None and decode_state(raw).v == 1
        await h.redis.delete(key)
        await h.redis.hset(key, mapping={"v": 1, "s": raw})  # the earlier layout
        outcome = {
            "schema": "tongda.outcome/v1",
            "notification_id": "old1",
            "customer_id": "c1",
            "channel": "voice",
            "leg": 0,
            "attempt": 1,
            "outcome": "busy",
            "provider": "test",
            "at": datetime.now(UTC).isoformat(),
        }
        inbox_tp = TopicPartition(t.router_inbox, 0)
        raw_outcome = orjson.dumps(outcome)
        signed = record(inbox_tp, 0, b"c1", raw_outcome)
        signed.headers.append(Signer.from_settings(h.settings).header(b"c1", raw_outcome))
        await h.engine.process({inbox_tp: [signed]})
        assert await h.redis.type(key) == b"string"
        state = decode_state(await h.redis.get(key))
        assert state.v == 2
        assert [(a.channel, a.outcome) for a in state.attempts] == [("voice", "busy")]


def record(tp: TopicPartition, offset: int, key: bytes, value: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, key, value, None, 0, 0, [])
