"""A channel service SIGKILLed with work in flight, on the real broker and Redis (issue 9,
faults 9 and 10): after a restart every attempt gets exactly one outcome on the router's inbox
and no attempt reaches the provider twice (the sandbox ledger)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from channel_support import (
    collect,
    create_topics,
    dispatch,
    produce,
    service_env,
    serving,
    wait_until,
)
from redis.asyncio import Redis

from services.sms.providers import SmsSandbox
from shared.channel.app import create_app
from shared.channel.claims import ORPHAN_DETAIL, claim_key
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome, Dispatch
from tools.devstack import Service

pytest_plugins = ["channel_support"]
pytestmark = [pytest.mark.timeout(180)]

MakeSettings = Callable[..., ChannelSettings]
# last four digits → the outcome the sandbox reports (0003 at once, the others by receipt)
OUTCOMES = {"9999": "delivered", "0004": "failed", "0003": "rejected"}


def records_of(ds: list[Dispatch]) -> list[tuple[bytes, bytes]]:
    return [(d.customer_id.encode(), dumps(d)) for d in ds]


async def test_sigkill_with_receipts_pending_loses_and_duplicates_nothing(
    make_settings: MakeSettings, redis: Redis, tmp_path: Path
) -> None:
    # receipts 2.4–6.4 s after each send: all still pending when the service is killed
    s = make_settings("sms", sandbox_time_scale=8.0)
    await create_topics(s)
    suffixes = list(OUTCOMES) * 20
    sent = [dispatch("sms", f"+86138001{i % 10}{sfx}") for i, sfx in enumerate(suffixes)]
    want = {d.notification_id: OUTCOMES[sfx] for d, sfx in zip(sent, suffixes, strict=True)}
    accepted = sum(1 for sfx in suffixes if sfx != "0003")
    ledger = f"{s.key_prefix}sandbox:sends"
    receipts = f"{s.key_prefix}receipt:sms:*"

    service = Service("sms", tmp_path / "sms.log", s.http_port, env=service_env(s))
    await service.start(ready_timeout=30.0)
    try:
        await produce(s, s.topics.dispatch("sms"), records_of(sent))

        claims = [claim_key(s, d.notification_id, d.leg, d.attempt) for d in sent]

        async def receipts_pending() -> bool:
            """Every attempt handed over and the provider's answer recorded (claims `s`):
            a kill between publishing an immediate outcome and recording it is another case
            (a second, stale outcome: docs/reliability.md)."""
            saved = [k async for k in redis.scan_iter(match=receipts, count=1000)]
            answered = set(await redis.mget(claims)) == {b"s"}
            return await redis.hlen(ledger) == len(sent) and len(saved) == accepted and answered

        await wait_until(receipts_pending, within_s=20.0)
        service.kill()  # SIGKILL: no drain, every receipt still to come
        await service.start(ready_timeout=30.0)

        records = await collect(
            s,
            s.topics.router_inbox,
            len(sent),
            within_s=40.0,
            until=lambda recs: (
                {decode(r.value, AttemptOutcome).notification_id for r in recs} >= set(want)
            ),
        )
        await asyncio.sleep(2.0)  # a duplicate would come within the receipts' spread
        records = await collect(s, s.topics.router_inbox, len(records), within_s=5.0)
    finally:
        await service.stop()

    outcomes = [decode(r.value, AttemptOutcome) for r in records]
    per_attempt = Counter((o.notification_id, o.leg, o.attempt) for o in outcomes)
    assert set(per_attempt.values()) == {1}, per_attempt.most_common(3)
    assert {o.notification_id: o.outcome for o in outcomes} == want
    sends = await redis.hgetall(ledger)
    assert len(sends) == len(sent) and set(sends.values()) == {b"1"}
    log = service.log_path.read_text()
    assert "taken over from a process that is gone" in log
    assert "receipt not reported" not in log


async def test_a_claim_left_by_a_dead_process_is_reported_failed_at_once(
    make_settings: MakeSettings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The states a SIGKILL leaves: a claim naming a process that is gone, without the
    provider's answer (killed mid-send) or with it (killed before its outcome was published).
    The dispatch coming again is not sent and not left to the router's step timeout: it is
    reported once, `failed` saying why, or with the provider's answer."""
    s = make_settings("sms")
    await create_topics(s)
    orphan = dispatch("sms", "+8613800139999")
    answered = dispatch("sms", "+8613800130003")  # the provider had said "rejected" at once
    done = dispatch("sms", "+8613800139999")
    await redis.set(claim_key(s, orphan.notification_id, 0, 1), b"c:deadbeefdeadbeef", ex=60)
    answer = b'o:deadbeefdeadbeef:{"o":"rejected","p":null,"d":"invalid number"}'
    await redis.set(claim_key(s, answered.notification_id, 0, 1), answer, ex=60)
    await redis.set(claim_key(s, done.notification_id, 0, 1), b"s", ex=60)
    fresh = dispatch("sms", "+8613800139999")
    with caplog.at_level(logging.INFO):
        async with serving(create_app(s, SmsSandbox()), s.http_port):
            await produce(s, s.topics.dispatch("sms"), records_of([orphan, answered, done, fresh]))

            async def fresh_sent() -> bool:
                return await redis.hlen(f"{s.key_prefix}sandbox:sends") == 1

            await wait_until(fresh_sent)
            records = await collect(s, s.topics.router_inbox, 3, within_s=10.0)
    outcomes = {o.notification_id: o for o in (decode(r.value, AttemptOutcome) for r in records)}
    assert len(records) == 3
    assert set(outcomes) == {
        orphan.notification_id,
        answered.notification_id,
        fresh.notification_id,
    }
    assert outcomes[answered.notification_id].outcome == "rejected"  # its answer, not failed
    assert outcomes[answered.notification_id].detail == "invalid number"
    assert outcomes[orphan.notification_id].outcome == "failed"
    assert outcomes[orphan.notification_id].detail == ORPHAN_DETAIL
    assert outcomes[fresh.notification_id].outcome == "delivered"
    sends = await redis.hgetall(f"{s.key_prefix}sandbox:sends")
    assert list(sends) == [f"sms:{fresh.notification_id}:0:1".encode()]  # neither other sent
    messages = [r.getMessage() for r in caplog.records]
    assert any("gone before the provider answered" in m for m in messages)
    assert any("answered by the provider (rejected)" in m for m in messages)
    assert any("already sent (the provider answered before)" in m for m in messages)
    assert await redis.get(claim_key(s, orphan.notification_id, 0, 1)) == b"s"


async def test_a_claim_of_a_live_process_is_left_to_it_until_it_is_gone(
    make_settings: MakeSettings, redis: Redis
) -> None:
    """A claim naming another process that is still alive (a rebalance mid-send) is not
    reported over its head: the dispatch waits until that process is heard of no more."""
    s = make_settings("sms")
    await create_topics(s)
    d = dispatch("sms", "+8613800139999")
    await redis.set(claim_key(s, d.notification_id, 0, 1), b"c:0123456789abcdef", ex=60)
    await redis.set(f"{s.key_prefix}alive:sms:0123456789abcdef", b"1", px=2500)
    gone_at = time.time() + 2.5
    async with serving(create_app(s, SmsSandbox()), s.http_port):
        await produce(s, s.topics.dispatch("sms"), records_of([d]))
        (record,) = await collect(s, s.topics.router_inbox, 1, within_s=15.0)
    outcome = decode(record.value, AttemptOutcome)
    assert outcome.outcome == "failed" and outcome.detail == ORPHAN_DETAIL
    assert outcome.at.timestamp() >= gone_at - 0.1  # not before its claimant was gone
    assert await redis.hlen(f"{s.key_prefix}sandbox:sends") == 0
