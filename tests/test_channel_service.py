"""The channel services end to end on the real broker and Redis: sandbox outcomes on every
channel, duplicate dispatches, dead letters, start-up checks, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
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
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.email.providers import EmailSandbox
from services.push.providers import PushSandbox
from services.sms.providers import SmsSandbox
from services.voice.providers import VoiceSandbox
from shared.channel.app import create_app
from shared.channel.sandbox import SandboxProvider
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome, Channel, Dispatch
from shared.errors import ConfigError
from tools.devstack import Service

pytest_plugins = ["channel_support"]

SANDBOXES: dict[Channel, type[SandboxProvider]] = {
    "sms": SmsSandbox,
    "email": EmailSandbox,
    "push": PushSandbox,
    "voice": VoiceSandbox,
}
# (channel, address) → the outcome the contract's sandbox table promises
EXPECTED: list[tuple[Channel, str, str]] = [
    ("sms", "+8613800130001", "delivered"),
    ("sms", "+8613800130002", "delivered"),
    ("sms", "+8613800130003", "rejected"),
    ("sms", "+8613800130004", "failed"),
    ("sms", "+8613800130005", "delivered"),
    ("sms", "+8613800130006", "delivered"),
    ("sms", "+8613800139999", "delivered"),
    ("voice", "+8613800130001", "busy"),
    ("voice", "+8613800130002", "no_answer"),
    ("voice", "+8613800130003", "rejected"),
    ("voice", "+8613800130004", "delivered"),
    ("voice", "+8613800130005", "busy"),  # first attempt
    ("voice", "+8613800130006", "voicemail"),
    ("voice", "+8613800139999", "delivered"),
    ("email", "bounce@example.com", "bounced"),
    ("email", "zhang.wei@example.com", "delivered"),
    ("push", "invalid-device-token", "rejected"),
    ("push", "fcm-device-token-1", "delivered"),
]

MakeSettings = Callable[..., ChannelSettings]


def records_of(ds: list[Dispatch]) -> list[tuple[bytes, bytes]]:
    return [(d.customer_id.encode(), dumps(d)) for d in ds]


def outcomes_of(records: list) -> list[AttemptOutcome]:  # type: ignore[type-arg]
    return [decode(r.value, AttemptOutcome) for r in records]


def has_outcomes_for(*ds: Dispatch) -> Callable[[list], bool]:  # type: ignore[type-arg]
    wanted = {d.notification_id for d in ds}
    return lambda recs: wanted <= {o.notification_id for o in outcomes_of(recs)}


async def test_every_sandbox_address_on_every_channel(make_settings: MakeSettings) -> None:
    settings = {ch: make_settings(ch) for ch in SANDBOXES}
    await create_topics(settings["sms"])
    sent = [(dispatch(ch, address), want) for ch, address, want in EXPECTED]
    async with AsyncExitStack() as stack:
        urls = await asyncio.gather(
            *(
                stack.enter_async_context(serving(create_app(s, SANDBOXES[ch]()), s.http_port))
                for ch, s in settings.items()
            )
        )
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{urls[0]}/readyz") as resp:
                assert resp.status == 200, await resp.text()
        for ch, s in settings.items():
            ds = [d for d, _ in sent if d.channel == ch]
            await produce(s, s.topics.dispatch(ch), records_of(ds))

        records = await collect(settings["sms"], settings["sms"].topics.router_inbox, len(sent))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{urls[0]}/metrics") as resp:
                assert 'tongda_provider_sends_total{channel="sms",provider="sandbox-sms"}' in (
                    await resp.text()
                )

    got = {(o.channel, o.notification_id): o for o in outcomes_of(records)}
    assert len(got) == len(sent)
    for d, want in sent:
        outcome = got[(d.channel, d.notification_id)]
        assert outcome.outcome == want, (d.channel, d.recipient)
        assert outcome.provider == f"sandbox-{d.channel}"
        assert (outcome.customer_id, outcome.leg, outcome.attempt) == (d.customer_id, 0, 1)


async def test_same_dispatch_twice_reaches_the_provider_once(
    make_settings: MakeSettings, redis: Redis
) -> None:
    s = make_settings("sms")
    await create_topics(s)
    d = dispatch("sms", "+8613800139999")
    after = dispatch("sms", "+8613800139998", customer_id=d.customer_id)  # same partition
    before = REGISTRY.get_sample_value("tongda_duplicate_dispatches_total", {"channel": "sms"})
    async with serving(create_app(s, SmsSandbox()), s.http_port):
        await produce(s, s.topics.dispatch("sms"), records_of([d, d, after]))
        records = await collect(s, s.topics.router_inbox, 0, until=has_outcomes_for(d, after))
        # `after` was handed over after the duplicate was claimed (same partition, in order)
        ledger = await redis.hgetall(f"{s.key_prefix}sandbox:sends")
    assert ledger[f"sms:{d.notification_id}:0:1".encode()] == b"1"
    assert [o.notification_id for o in outcomes_of(records)].count(d.notification_id) == 1
    duplicates = REGISTRY.get_sample_value("tongda_duplicate_dispatches_total", {"channel": "sms"})
    assert (duplicates or 0) - (before or 0) == 1


async def test_bad_records_are_dead_lettered_and_the_next_is_processed(
    make_settings: MakeSettings,
) -> None:
    s = make_settings("sms")
    await create_topics(s)
    valid = dispatch("sms", "+8613800139999")
    wrong_channel = dispatch("email", "li@example.com", customer_id=valid.customer_id)
    key = valid.customer_id.encode()
    async with serving(create_app(s, SmsSandbox()), s.http_port):
        await produce(
            s,
            s.topics.dispatch("sms"),
            [
                (key, b'{"schema": "tongda.dispatch/v1", oops'),
                (key, dumps(wrong_channel)),
                *records_of([valid]),
            ],
        )
        dead = await collect(s, s.topics.deadletter, 2)
        records = await collect(s, s.topics.router_inbox, 0, until=has_outcomes_for(valid))
    headers = [dict(r.headers) for r in sorted(dead, key=lambda r: r.offset)]
    assert [h["error"] for h in headers] == [b"malformed_json", b"wrong_channel"]
    assert all(h["source-topic"] == s.topics.dispatch("sms").encode() for h in headers)
    assert sorted(r.value for r in dead)[0] == b'{"schema": "tongda.dispatch/v1", oops'
    assert [o.outcome for o in outcomes_of(records)] == ["delivered"]


async def test_start_fails_clearly_without_the_dispatch_topic(make_settings: MakeSettings) -> None:
    s = make_settings("push")  # topics never created
    with pytest.raises(ConfigError, match=rf"{s.topics.dispatch('push')}.*python -m shared.topics"):
        async with serving(create_app(s, PushSandbox()), s.http_port):
            pass


async def test_sigterm_drains_pending_receipts_and_exits_0(
    make_settings: MakeSettings, redis: Redis, tmp_path: Path
) -> None:
    # receipts 0.6–1.6 s after each send: still pending when SIGTERM arrives
    s = make_settings("sms", sandbox_time_scale=2.0, drain_timeout_s=10.0)
    await create_topics(s)
    sent = [
        (dispatch("sms", "+8613800130001"), "delivered"),
        (dispatch("sms", "+8613800130004"), "failed"),
        (dispatch("sms", "+8613800139999"), "delivered"),
    ]
    service = Service("sms", tmp_path / "sms.log", s.http_port, env=service_env(s))
    await service.start(ready_timeout=30.0)
    try:
        await produce(s, s.topics.dispatch("sms"), records_of([d for d, _ in sent]))

        async def all_handed_over() -> bool:
            return await redis.hlen(f"{s.key_prefix}sandbox:sends") == len(sent)

        await wait_until(all_handed_over)
        sigterm_at = datetime.now(UTC)
        service.send(signal.SIGTERM)
        assert service.popen is not None
        returncode = await asyncio.to_thread(service.popen.wait, 20)
    finally:
        await service.stop()
    assert returncode == 0, service.tail()

    records = await collect(s, s.topics.router_inbox, len(sent), within_s=2.0)
    got = {o.notification_id: o for o in outcomes_of(records)}
    for d, want in sent:
        assert got[d.notification_id].outcome == want
        assert got[d.notification_id].at > sigterm_at  # reported during the drain
    log = service.log_path.read_text()
    assert not any(d.recipient in log for d, _ in sent)  # addresses only masked
    drained = [orjson.loads(line) for line in log.splitlines() if '"drained"' in line]
    assert drained and drained[0]["receipts_left"] == 0


async def test_drain_gives_up_on_receipts_at_drain_timeout(
    make_settings: MakeSettings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_settings("voice", sandbox_time_scale=1.0, drain_timeout_s=0.3)
    await create_topics(s)
    d = dispatch("voice", "+8613800130002")  # no answer after a 3 s ring timeout

    async def handed_over() -> bool:
        return await redis.hlen(f"{s.key_prefix}sandbox:sends") == 1

    with caplog.at_level(logging.INFO):
        async with serving(create_app(s, VoiceSandbox()), s.http_port):
            await produce(s, s.topics.dispatch("voice"), records_of([d]))
            await wait_until(handed_over)
            stopping = time.monotonic()
    assert time.monotonic() - stopping < 2.0  # not the 3 s the call would take
    drained = [r for r in caplog.records if r.getMessage() == "drained"]
    assert [r.__dict__["receipts_left"] for r in drained] == [1]
