"""The inquiries desk (services/router/inquiries/) on the router's production core: real
broker and Redis, the batch engine running, the desk called as the router's faust agents
call it. The clock is simulated and frozen (a Tuesday 10:00 in Shanghai), so windows and SLA
deadlines are decided by data, not by when the test runs."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from shared.addresses import address_hash
from tests.router_support import Harness, Reader, answering, engine_harness, value

pytestmark = [pytest.mark.timeout(120)]

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # Tuesday 10:00 in Shanghai
PHONE = "+8613800000777"


@pytest.fixture
async def h(broker: str, redis_server: str) -> AsyncIterator[Harness]:
    async with (
        engine_harness(broker, redis_server, policy="cn", clock_start=NOW) as h,
        answering(h),
    ):
        yield h


def inquiry(text: str, *, frm: str = PHONE, channel: str = "sms", **kw: Any) -> dict[str, Any]:
    return {
        "schema": "inquiry.received/v1",
        "id": f"inq-{uuid.uuid4().hex[:10]}",
        "customer_id": None,
        "channel": channel,
        "from": frm,
        "text": text,
        "received_at": NOW.isoformat(),
        **kw,
    }


def profile(cid: str, **kw: Any) -> dict[str, Any]:
    return {
        "schema": "customer.profile/v1",
        "customer_id": cid,
        "phone": PHONE,
        "email": "li.wei@example.com",
        "locale": "zh-CN",
        "timezone": "Asia/Shanghai",
        "updated_at": (NOW - timedelta(days=30)).isoformat(),
        **kw,
    }


def request(nid: str, cid: str, type_: str = "repayment_due", **kw: Any) -> dict[str, Any]:
    return {
        "schema": "notification.requested/v1",
        "id": nid,
        "type": type_,
        "customer_id": cid,
        "occurred_at": NOW.isoformat(),
        "data": {"amount_due": "1280.00", "currency": "CNY", "due_date": "2026-12-05"},
        **kw,
    }


async def set_profile(h: Harness, r: Reader, cid: str, **kw: Any) -> None:
    """Publish a profile and wait until the engine indexed it."""
    await h.publish(h.settings.topics.profiles, profile(cid, **kw), key=cid)
    key = h.settings.address_hash_key.get_secret_value().encode()
    sender = h.store.keys.sender(address_hash(key, kw.get("phone", PHONE)))
    for _ in range(200):
        if await h.redis.get(sender) == cid.encode():
            return
        await r.poll()
    raise AssertionError("the profile was not indexed")


async def final(h: Harness, r: Reader, nid: str) -> dict[str, Any]:
    (m,) = await r.take(
        h.settings.topics.status, where=lambda m: value(m)["notification_id"] == nid
    )
    return value(m)


def of(nid: str) -> Any:
    return lambda m: value(m).get("notification_id") == nid


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def topics(h: Harness) -> list[str]:
    t = h.settings.topics
    return [
        t.status,
        t.audit,
        t.escalated,
        t.feedback,
        t.preferences,
        t.dispatch("sms"),
        t.dispatch("voice"),
        t.dispatch("email"),
    ]


async def test_a_due_date_question_gets_the_standard_reply_with_own_figures(h: Harness) -> None:
    t = h.settings.topics
    async with Reader(h.settings.kafka_bootstrap, *topics(h)) as r:
        await set_profile(h, r, "c-due")
        await h.publish(t.requested, request("n-due", "c-due"), key="c-due")
        await final(h, r, "n-due")
        q = inquiry("还款日是哪天？")
        decision = await h.desk.on_received(orjson.dumps(q))
        assert decision == "answered: reply.due_date"
        (sms,) = await r.take(
            t.dispatch("sms"), where=lambda m: value(m)["type"] == "reply.due_date"
        )
        d = value(sms)
        assert d["recipient"] == PHONE and d["customer_id"] == "c-due"
        assert d["locale"] == "zh-CN"
        assert (d["data"]["due_date"], d["data"]["amount_due"]) == ("2026-12-05", "1280.00")
        assert d["data"]["inquiry_id"] == q["id"]
        # the timeline: the inbound message and the reply, linked by the inquiry id
        await final(h, r, d["notification_id"])
    timeline = [
        orjson.loads(x) for x in await h.redis.lrange(h.store.keys.timeline("c-due"), 0, -1)
    ]
    linked = [x for x in timeline if x.get("inquiry_id") == q["id"]]
    assert {x["direction"] for x in linked} == {"inbound", "outbound"}
    inbound = next(x for x in linked if x["direction"] == "inbound")
    assert (inbound["intent"], inbound["tier"]) == ("due_date", "normal")
    assert inbound["recipient"] == "+86138****0777"
    view = await h.desk.view(q["id"])
    assert view is not None and view["reply"] == d["notification_id"]


async def test_an_unknown_sender_gets_a_generic_reply_and_a_normal_escalation(h: Harness) -> None:
    t = h.settings.topics
    stranger = "+8613900000123"
    async with Reader(h.settings.kafka_bootstrap, *topics(h)) as r:
        q = inquiry("我还要还多少钱", frm=stranger)
        assert await h.desk.on_received(orjson.dumps(q)) == (
            "answered: reply.generic; escalated: normal"
        )
        (esc,) = await r.take(t.escalated)
        (sms,) = await r.take(t.dispatch("sms"))
    e = value(esc)
    assert (e["tier"], e["intent"], e["customer_id"], e["level"]) == (
        "normal",
        "amount_due",
        None,
        1,
    )
    assert e["respond_by"].startswith((NOW + timedelta(hours=24)).isoformat()[:16])
    d = value(sms)
    assert d["type"] == "reply.generic" and d["recipient"] == stranger
    assert not {"amount_due", "due_date", "loan_id"} & set(d["data"])
    assert d["customer_id"].startswith("anon-")


async def test_hardship_escalates_urgent_holds_collection_and_resolution_resumes_it(
    h: Harness,
) -> None:
    t = h.settings.topics
    misses = counter("tongda_inquiry_sla_misses_total", tier="urgent", intent="hardship")
    async with Reader(h.settings.kafka_bootstrap, *topics(h)) as r:
        await set_profile(h, r, "c-hard")
        q = inquiry("我这个月失业了，还不上，能不能延期")
        assert await h.desk.on_received(orjson.dumps(q)) == "escalated: urgent; collection held"
        (esc,) = await r.take(t.escalated)
        e = value(esc)
        assert (e["tier"], e["intent"], e["customer_id"], e["level"]) == (
            "urgent",
            "hardship",
            "c-hard",
            1,
        )
        assert datetime.fromisoformat(e["respond_by"]) == NOW + timedelta(minutes=15)
        # an acknowledgement goes to the borrower at once
        await r.take(t.dispatch("sms"), where=lambda m: value(m)["type"] == "reply.escalated")

        # the next robocall waits for the inquiry; a reminder (not collection) does not
        await h.publish(t.requested, request("n-coll", "c-hard", "overdue_notice"), key="c-hard")
        (held,) = await r.take(t.audit, where=of("n-coll"))
        assert value(held)["decision"].startswith("deferred: hardship_hold until ")
        await h.publish(t.requested, request("n-rem", "c-hard"), key="c-hard")
        assert (await final(h, r, "n-rem"))["status"] == "delivered"

        # the deadline passes (the clock moves on 16 minutes): level 2, once
        h.desk.clock.start = NOW + timedelta(minutes=16)
        assert await h.desk.tick() == 1
        assert await h.desk.tick() == 0
        (esc2,) = await r.take(t.escalated, where=lambda m: value(m)["level"] == 2)
        assert value(esc2)["inquiry_id"] == q["id"]
        assert (
            counter("tongda_inquiry_sla_misses_total", tier="urgent", intent="hardship")
            == misses + 1
        )

        # the agent resolves it: the hold is lifted and the call is placed; one survey
        resolved = {
            "schema": "inquiry.resolved/v1",
            "inquiry_id": q["id"],
            "customer_id": "c-hard",
            "resolved_at": (NOW + timedelta(minutes=20)).isoformat(),
            "resolution": "instalment plan agreed",
            "agent": "agent-17",
        }
        assert await h.desk.on_resolved(orjson.dumps(resolved)) == "resolved; survey sent"
        assert await h.desk.on_resolved(orjson.dumps(resolved)) == "already resolved"
        h.scheduler.clock.start = NOW + timedelta(minutes=20)
        await h.scheduler.tick()
        await r.take(t.dispatch("voice"), where=of("n-coll"))
        (survey,) = await r.take(t.dispatch("sms"), where=lambda m: value(m)["type"] == "survey")
        assert value(survey)["recipient"] == PHONE
    view = await h.desk.view(q["id"])
    assert view is not None
    assert view["resolution"]["agent"] == "agent-17" and view["escalation"]["level"] == 2


@pytest.mark.parametrize(
    ("text", "channel", "tier", "intent"),
    [
        ("有人用我的身份证贷款了", "sms", "urgent", "fraud"),
        ("I lost my phone", "sms", "urgent", "fraud"),
        ("利息算错了", "sms", "high", "dispute"),
        ("请给我回电话", "sms", "high", "callback_request"),
        ("", "voice", "high", "callback_request"),  # a missed inbound call
        ("DTMF 2: call back requested", "voice", "high", "callback_request"),
        ("还款日是哪天？", "push", "normal", "due_date"),  # no replies by app: an agent answers
    ],
)
async def test_escalations_by_tier(
    h: Harness, text: str, channel: str, tier: str, intent: str
) -> None:
    t = h.settings.topics
    async with Reader(h.settings.kafka_bootstrap, t.escalated) as r:
        q = inquiry(text, channel=channel)
        assert await h.desk.on_received(orjson.dumps(q)) == f"escalated: {tier}"
        (esc,) = await r.take(t.escalated)
    e = value(esc)
    assert (e["tier"], e["intent"], e["channel"]) == (tier, intent, channel)
    delta = {"urgent": timedelta(minutes=15), "high": timedelta(hours=2)}.get(
        tier, timedelta(hours=24)
    )
    assert datetime.fromisoformat(e["respond_by"]) == NOW + delta


async def test_opt_out_keyword_and_start_and_an_older_profile(h: Harness) -> None:
    t = h.settings.topics
    async with Reader(h.settings.kafka_bootstrap, *topics(h)) as r:
        await set_profile(h, r, "c-td", push_tokens=[])
        assert await h.desk.on_received(orjson.dumps(inquiry(" 退订 "))) == "opted_out: sms"
        (pref,) = await r.take(t.preferences)
        p = value(pref)
        assert (p["customer_id"], p["channel"], p["state"], p["source"]) == (
            "c-td",
            "sms",
            "opted_out",
            "inbound_keyword",
        )
        # one confirmation, on SMS (transactional, so the opt-out does not stop it)
        (conf,) = await r.take(
            t.dispatch("sms"), where=lambda m: value(m)["type"] == "preference.opted_out"
        )
        await final(h, r, value(conf)["notification_id"])

        # a reminder (push → sms → email): the SMS step is suppressed, email delivers
        await h.publish(t.requested, request("n-after", "c-td"), key="c-td")
        s = await final(h, r, "n-after")
        assert [(a["channel"], a["outcome"]) for a in s["attempts"] if a["channel"] != "push"] == [
            ("sms", "suppressed"),
            ("email", "delivered"),
        ]
        (rec,) = await r.take(
            t.audit, where=lambda m: of("n-after")(m) and value(m)["channel"] == "sms"
        )
        assert value(rec)["decision"] == "suppressed: opted_out"

        # a profile update older than the borrower's own choice does not undo it
        await set_profile(h, r, "c-td", push_tokens=[], opted_out_channels=[])
        await h.publish(t.requested, request("n-old-profile", "c-td"), key="c-td")
        s = await final(h, r, "n-old-profile")
        sms = [a["outcome"] for a in s["attempts"] if a["channel"] == "sms"]
        assert (sms, s["channel"]) == (["suppressed"], "email")

        # START opts back in: the next reminder goes by SMS
        assert await h.desk.on_received(orjson.dumps(inquiry("start"))) == "opted_in: sms"
        await h.publish(t.requested, request("n-back", "c-td"), key="c-td")
        s = await final(h, r, "n-back")
        assert (s["status"], s["channel"]) == ("delivered", "sms")


async def test_a_newer_profile_decides_again(h: Harness) -> None:
    t = h.settings.topics
    async with Reader(h.settings.kafka_bootstrap, *topics(h)) as r:
        await set_profile(h, r, "c-new", push_tokens=[])
        await h.desk.on_received(orjson.dumps(inquiry("TD")))
        # the CRM records, after the borrower's STOP, that the borrower opted in again
        newer = (NOW + timedelta(hours=1)).isoformat()
        await set_profile(h, r, "c-new", push_tokens=[], updated_at=newer, locale="en-US")
        await h.publish(t.requested, request("n-newer", "c-new"), key="c-new")
        s = await final(h, r, "n-newer")
        assert (s["status"], s["channel"]) == ("delivered", "sms")


async def test_survey_answer_becomes_feedback_with_csat(h: Harness) -> None:
    t = h.settings.topics
    async with Reader(h.settings.kafka_bootstrap, *topics(h)) as r:
        await set_profile(h, r, "c-fb")
        q = inquiry("你们的催收电话太频繁了，我要投诉")
        decision = await h.desk.on_received(orjson.dumps(q))
        assert decision.startswith("escalated: ")
        tier = decision.split(": ")[1]
        intent = (await h.desk.view(q["id"]) or {})["intent"]
        before = counter("tongda_csat_scores_total", intent=intent, tier=tier, score="5")
        # a score before any survey is not feedback
        early = inquiry("5")
        assert not (await h.desk.on_received(orjson.dumps(early))).startswith("feedback")
        resolved = {
            "schema": "inquiry.resolved/v1",
            "inquiry_id": q["id"],
            "resolved_at": NOW.isoformat(),
        }
        await h.desk.on_resolved(orjson.dumps(resolved))
        assert await h.desk.on_received(orjson.dumps(inquiry("5分"))) == "feedback: 5"
        (fb,) = await r.take(t.feedback)
        # the survey is answered once: another score is an ordinary message
        assert not (await h.desk.on_received(orjson.dumps(inquiry("4")))).startswith("feedback")
    f = value(fb)
    assert (f["inquiry_id"], f["customer_id"], f["score"], f["channel"]) == (
        q["id"],
        "c-fb",
        5,
        "sms",
    )
    assert counter("tongda_csat_scores_total", intent=intent, tier=tier, score="5") == before + 1
    view = await h.desk.view(q["id"])
    assert view is not None and view["feedback"]["score"] == 5


async def test_invalid_and_unknown_are_refused(h: Harness) -> None:
    from shared.errors import InvalidEvent

    with pytest.raises(InvalidEvent) as bad:
        await h.desk.on_received(b'{"schema": "inquiry.received/v1", "id": "x"}')
    assert bad.value.code == "invalid_fields"
    unknown = {
        "schema": "inquiry.resolved/v1",
        "inquiry_id": "nope",
        "resolved_at": NOW.isoformat(),
    }
    with pytest.raises(InvalidEvent) as missing:
        await h.desk.on_resolved(orjson.dumps(unknown))
    assert missing.value.code == "unknown_inquiry"


async def test_tombstone_erases_the_index_and_the_inquiries(h: Harness) -> None:
    t = h.settings.topics
    async with Reader(h.settings.kafka_bootstrap, *topics(h)) as r:
        await set_profile(h, r, "c-gone")
        q = inquiry("利息算错了")
        await h.desk.on_received(orjson.dumps(q))
        await h.publish(t.profiles, None, key="c-gone")
        keys = h.store.keys
        for _ in range(200):
            if not await h.redis.exists(keys.customer_senders("c-gone")):
                break
            await r.poll()
    key = h.settings.address_hash_key.get_secret_value().encode()
    assert await h.redis.get(keys.sender(address_hash(key, PHONE))) is None
    assert await h.desk.view(q["id"]) is None
    assert await h.redis.zscore(keys.inquiry_timers, q["id"]) is None
    assert not await h.redis.exists(keys.controls("c-gone"))
