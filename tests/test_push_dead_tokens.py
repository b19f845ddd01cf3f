"""Dead push tokens through the router on the real broker and Redis: a token the push service
found dead (shared.push_tokens.reject_dead, as FCM's UNREGISTERED does) is left out of the
customer's next notifications, from the profile and from the event's `contacts`, until a
profile updated after that attempt lists it again."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.router.push_filter import without_dead_tokens
from shared.channel.provider import ProviderContext
from shared.config import ChannelSettings
from shared.contract.codec import decode
from shared.contract.models import CustomerProfile, Dispatch, NotificationRequested
from shared.push_tokens import DeadMark, dead_token_key, mark_token_dead, reject_dead
from tests.router_support import Harness, Reader, engine_harness, value
from tests.test_router_engine import answer, event

CID = "c-push"
TOK_A, TOK_B, TOK_C = "fcm-token-aaaa-1111", "fcm-token-bbbb-2222", "fcm-token-cccc-3333"


def profile(updated_at: datetime, tokens: list[str]) -> dict[str, Any]:
    return {
        "schema": "customer.profile/v1",
        "customer_id": CID,
        "push_tokens": tokens,
        "updated_at": updated_at.isoformat(),
    }


async def stored(h: Harness, updated_at: datetime, within_s: float = 10.0) -> None:
    """Wait until the router has stored the profile of `updated_at` (profiles and requests
    are different topics: a request must not overtake the profile it is meant to see)."""
    deadline = time.monotonic() + within_s
    while True:
        raw = await h.redis.get(h.store.keys.profile(CID))
        if raw is not None and CustomerProfile.model_validate_json(raw).updated_at == updated_at:
            return
        assert time.monotonic() < deadline, "profile not stored"
        await asyncio.sleep(0.05)


async def first_push(h: Harness, r: Reader, nid: str) -> dict[str, Any]:
    t = h.settings.topics
    await h.publish(t.requested, event(nid, "loan_approved", cid=CID), key=CID)
    (m,) = await r.take(
        t.dispatch("push"), where=lambda m: value(m)["notification_id"] == nid
    )
    return value(m)


async def test_a_dead_token_is_skipped_until_a_newer_profile_lists_it(
    broker: str, redis_server: str
) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        push = ChannelSettings(channel="push", key_prefix=h.settings.key_prefix)
        ctx = ProviderContext(push, h.redis, _no_receipts, _no_inbound)
        t0 = datetime.now(UTC) - timedelta(hours=1)
        async with Reader(broker, t.dispatch("push"), t.status) as r:
            await h.publish(t.profiles, profile(t0, [TOK_A, TOK_B]), key=CID)
            await stored(h, t0)
            # 1. The first token is unregistered: the push service marks it dead.
            d = await first_push(h, r, "n1")
            assert (d["recipient"], d["leg"]) == (TOK_A, 0)
            await reject_dead(ctx, decode(orjson.dumps(d), Dispatch), "UNREGISTERED")
            await answer(h, d, "rejected")
            (second,) = await r.take(
                t.dispatch("push"), where=lambda m: value(m)["notification_id"] == "n1"
                and value(m)["leg"] == 1
            )
            assert value(second)["recipient"] == TOK_B
            await answer(h, value(second), "delivered")

            # 2. The next notification never uses it: its first push goes to the other token.
            d = await first_push(h, r, "n2")
            assert (d["recipient"], d["leg"]) == (TOK_B, 0)
            await answer(h, d, "delivered")

            # 3. A profile dated before the token died changes nothing.
            await h.publish(t.profiles, profile(t0 + timedelta(minutes=5), [TOK_A, TOK_B]), key=CID)
            await stored(h, t0 + timedelta(minutes=5))
            d = await first_push(h, r, "n3")
            assert d["recipient"] == TOK_B
            await answer(h, d, "delivered")
            key = dead_token_key(h.settings, CID, TOK_A)
            assert await h.redis.exists(key)

            # 4. A profile updated since lists it again: usable, and the mark is gone (so
            # the push service's own known-dead check lets it through as well).
            later = datetime.now(UTC) + timedelta(minutes=1)
            await h.publish(t.profiles, profile(later, [TOK_A, TOK_B]), key=CID)
            await stored(h, later)
            d = await first_push(h, r, "n4")
            assert (d["recipient"], d["leg"]) == (TOK_A, 0)
            await answer(h, d, "delivered")
            assert not await h.redis.exists(key)

            # 5. The event's own `contacts` tokens are checked too: only a dead one → the
            # push step has no address.
            await mark_token_dead(
                h.redis, h.settings, CID, TOK_C, "UNREGISTERED", found_at=later + timedelta(1)
            )
            await h.publish(
                t.requested,
                event("n5", "loan_approved", cid=CID, contacts={"push_tokens": [TOK_C]}),
                key=CID,
            )
            (status,) = await r.take(
                t.status, where=lambda m: value(m)["notification_id"] == "n5"
            )
            s = value(status)
            assert s["status"] == "suppressed"
            first = s["attempts"][0]
            assert (first["channel"], first["outcome"], first["detail"]) == (
                "push",
                "suppressed",
                "no_address",
            )
            await r.settle(0.3)
            assert not [
                m for m in r.seen
                if m.topic == t.dispatch("push") and value(m)["notification_id"] == "n5"
            ]  # fmt: skip


async def test_one_redis_read_per_batch_and_old_marks_without_a_time(
    broker: str, redis_server: str
) -> None:
    async with engine_harness(broker, redis_server, run=False) as h:
        now = datetime.now(UTC)
        p = CustomerProfile.model_validate(profile(now, [TOK_A, TOK_B]))
        # a mark written before marks carried their time: dead whatever the profile says
        await h.redis.set(dead_token_key(h.settings, CID, TOK_A), b"unregistered token")
        assert DeadMark.decode(b"unregistered token") == DeadMark(None, "unregistered token")
        reqs = [
            (None, None, _request(f"b{i}", contacts={"push_tokens": [TOK_A]} if i else None))
            for i in range(3)
        ]
        calls: list[int] = []
        run = h.store.run

        async def counting(commands: Any) -> Any:
            calls.append(len(commands))
            return await run(commands)

        h.store.run = counting  # type: ignore[method-assign]
        plans = h.engine.machine.plans
        out, profiles = await without_dead_tokens(
            h.store, h.settings, plans, reqs, {CID: p}  # type: ignore[arg-type]
        )
        assert calls == [2]  # one round trip for the whole batch: a GET per token (one slot each)
        assert profiles[CID] is not None and profiles[CID].push_tokens == [TOK_B]
        assert p.push_tokens == [TOK_A, TOK_B]  # the profile given is not changed
        assert [r[2].contacts.push_tokens if r[2].contacts else None for r in out] == [
            None,
            [],
            [],
        ]
        calls.clear()
        out, _ = await without_dead_tokens(
            h.store, h.settings, plans, [(None, None, _request("b9"))], {CID: None}  # type: ignore[list-item]
        )
        assert calls == []  # no token anywhere: no Redis at all
        voice_only = NotificationRequested.model_validate(event("b10", "overdue_notice", cid=CID))
        await without_dead_tokens(
            h.store, h.settings, plans, [(None, None, voice_only)], {CID: p}  # type: ignore[list-item]
        )
        assert calls == []  # tokens, but no push step in the plan: no Redis either


def _request(nid: str, **kw: Any) -> Any:
    return NotificationRequested.model_validate(event(nid, "loan_approved", cid=CID, **kw))


async def _no_receipts(_: Any) -> bool:
    return True


async def _no_inbound(_: Any) -> str:
    return ""

