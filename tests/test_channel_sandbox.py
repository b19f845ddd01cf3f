"""The sandbox providers, driven directly: outcomes per address, delays, ledger, close."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from channel_support import dispatch
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.email.providers import EmailSandbox
from services.push.providers import PushSandbox
from services.sms.providers import SmsSandbox
from services.voice.providers import VoiceSandbox
from shared.channel.provider import (
    Accepted,
    Completed,
    Inbound,
    ProviderContext,
    Receipt,
    SendResult,
)
from shared.channel.sandbox import SandboxProvider
from shared.config import ChannelSettings
from shared.contract.models import Channel, Dispatch
from shared.templates import Message
from tools.devstack import RedisServer

pytest_plugins = ["channel_support"]

SCALE = 0.05
MESSAGE = Message(subject="s", body="b")


class Collector:
    """A receipt sink recording each receipt with the time it arrived."""

    def __init__(self) -> None:
        self.receipts: list[tuple[float, Receipt]] = []
        self.inbounds: list[Inbound] = []
        self.arrived = asyncio.Condition()

    async def inbound(self, message: Inbound) -> str:
        self.inbounds.append(message)
        return f"inq-{len(self.inbounds)}"

    async def __call__(self, receipt: Receipt) -> bool:
        async with self.arrived:
            self.receipts.append((time.monotonic(), receipt))
            self.arrived.notify_all()
        return True

    async def wait_for(self, count: int, within_s: float = 5.0) -> list[tuple[float, Receipt]]:
        async with self.arrived:
            await asyncio.wait_for(
                self.arrived.wait_for(lambda: len(self.receipts) >= count), within_s
            )
        return list(self.receipts)

    def of(self, result: SendResult) -> tuple[float, Receipt]:
        assert isinstance(result, Accepted)
        return next(
            (t, r) for t, r in self.receipts if r.provider_message_id == result.provider_message_id
        )


Started = tuple[SandboxProvider, Collector, ChannelSettings]


@pytest.fixture
async def started(
    make_settings: Callable[..., ChannelSettings], redis: Redis
) -> AsyncIterator[Callable[..., Awaitable[Started]]]:
    """Start sandbox providers with a collector as their receipt sink; close them after."""
    providers: list[SandboxProvider] = []

    async def start(provider: SandboxProvider, **overrides: object) -> Started:
        settings = make_settings(provider.channel, sandbox_time_scale=SCALE, **overrides)
        collector = Collector()
        await provider.start(ProviderContext(settings, redis, collector, collector.inbound))
        providers.append(provider)
        return provider, collector, settings

    yield start
    for provider in providers:
        await provider.close()


async def send_all(provider: SandboxProvider, ds: list[Dispatch]) -> tuple[float, list[SendResult]]:
    t0 = time.monotonic()
    return t0, list(await asyncio.gather(*(provider.send(d, MESSAGE) for d in ds)))


def phone(suffix: str) -> str:
    return f"+86138001{suffix}"


async def test_sms_outcomes_by_number(started) -> None:
    provider, collector, _ = await started(SmsSandbox())
    suffixes = ["0001", "0002", "0003", "0004", "0005", "0006", "9999"]
    t0, results = await send_all(provider, [dispatch("sms", phone(s)) for s in suffixes])
    by = dict(zip(suffixes, results, strict=True))

    rejected = by.pop("0003")
    assert rejected == Completed("rejected", None, "invalid number")  # refused at send, like a 400
    await collector.wait_for(len(by))
    for suffix, result in by.items():
        at, receipt = collector.of(result)
        expected = "failed" if suffix == "0004" else "delivered"
        assert receipt.outcome == expected, suffix
        assert at - t0 >= (0.4 if suffix == "0004" else 0.3) * SCALE


async def test_voice_outcomes_and_ringing(started) -> None:
    provider, collector, _ = await started(VoiceSandbox())
    suffixes = ["0001", "0002", "0003", "0004", "0006", "9999"]
    t0, results = await send_all(provider, [dispatch("voice", phone(s)) for s in suffixes])
    assert all(isinstance(r, Accepted) for r in results)
    await collector.wait_for(len(suffixes))
    got = {s: collector.of(r) for s, r in zip(suffixes, results, strict=True)}

    outcomes = {s: r.outcome for s, (_, r) in got.items()}
    assert outcomes == {
        "0001": "busy",
        "0002": "no_answer",
        "0003": "rejected",
        "0004": "delivered",
        "0006": "voicemail",
        "9999": "delivered",
    }
    elapsed = {s: at - t0 for s, (at, _) in got.items()}
    assert elapsed["0001"] >= 0.9 * SCALE  # busy only after ringing
    assert elapsed["0002"] >= 3.0 * SCALE  # ring timeout
    assert elapsed["0004"] >= 1.9 * SCALE  # ring, then the message played
    # an unknown number fails fast, busy comes after ringing, no answer after the ring timeout
    assert elapsed["0003"] < elapsed["0001"] < elapsed["0004"] < elapsed["0002"]


async def test_voice_0005_busy_twice_then_answered(started) -> None:
    provider, collector, _ = await started(VoiceSandbox())
    first = dispatch("voice", phone("0005"))
    outcomes = []
    for attempt in (1, 2, 3, 4):
        result = await provider.send(first.model_copy(update={"attempt": attempt}), MESSAGE)
        await collector.wait_for(attempt)
        outcomes.append(collector.of(result)[1].outcome)
    assert outcomes == ["busy", "busy", "delivered", "delivered"]

    other = dispatch("voice", phone("0005"))  # another notification starts counting afresh
    result = await provider.send(other, MESSAGE)
    await collector.wait_for(5)
    assert collector.of(result)[1].outcome == "busy"


async def test_email_bounce_is_accepted_then_bounced(started) -> None:
    provider, collector, _ = await started(EmailSandbox())
    t0, (bounce, ok) = await send_all(
        provider,
        [dispatch("email", "bounce@example.com"), dispatch("email", "zhang.wei@example.com")],
    )
    assert isinstance(bounce, Accepted) and isinstance(ok, Accepted)  # SMTP 250 for both
    await collector.wait_for(2)
    (bounced_at, bounced), (ok_at, delivered) = collector.of(bounce), collector.of(ok)
    assert (bounced.outcome, delivered.outcome) == ("bounced", "delivered")
    assert ok_at < bounced_at
    assert bounced_at - t0 >= 0.8 * SCALE


async def test_push_invalid_token_rejected(started) -> None:
    provider, collector, _ = await started(PushSandbox())
    _, (bad, good) = await send_all(
        provider, [dispatch("push", "invalid-token-1"), dispatch("push", "fcm-token-abc")]
    )
    assert bad == Completed("rejected", None, "unregistered token")
    await collector.wait_for(1)
    assert collector.of(good)[1].outcome == "delivered"


@pytest.mark.parametrize("channel", ["sms", "email", "push", "voice"])
async def test_ledger_counts_every_send(started, redis: Redis, channel: Channel) -> None:
    providers = {
        "sms": SmsSandbox,
        "email": EmailSandbox,
        "push": PushSandbox,
        "voice": VoiceSandbox,
    }
    provider, _, settings = await started(providers[channel]())
    address = {"email": "li@example.com", "push": "tok-1"}.get(channel, phone("9999"))
    d = dispatch(channel, address, leg=2, attempt=3)
    await provider.send(d, MESSAGE)
    await provider.send(d, MESSAGE)
    ledger = await redis.hgetall(f"{settings.key_prefix}sandbox:sends")
    assert ledger == {f"{channel}:{d.notification_id}:2:3".encode(): b"2"}


class AnswerLost:
    """A Redis client whose first pipeline is applied by Redis but answered with a dropped
    connection, as when Redis is killed right after writing its AOF (the write survives)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.cut = 0

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self.redis.pipeline(transaction=transaction)
        execute = pipe.execute

        async def applied_then_cut(*args: Any, **kwargs: Any) -> Any:
            result = await execute(*args, **kwargs)
            if not self.cut:
                self.cut += 1
                raise RedisConnectionError("Connection closed by server.")
            return result

        pipe.execute = applied_then_cut  # type: ignore[method-assign]
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)


async def test_a_ledger_write_retried_after_a_lost_answer_counts_the_send_once(
    make_settings: Callable[..., ChannelSettings], redis: Redis
) -> None:
    """The 100,000 campaign saw two attempts 'sent twice' right after Redis kills: the ledger's
    HINCRBY had been applied, its answer lost, and the retry counted the one send again."""
    settings = make_settings("sms", sandbox_time_scale=SCALE)
    collector = Collector()
    provider = SmsSandbox()
    flaky = AnswerLost(redis)
    await provider.start(ProviderContext(settings, flaky, collector, collector.inbound))  # type: ignore[arg-type]
    try:
        d = dispatch("sms", phone("0003"), leg=1, attempt=2)  # rejected at once: no receipt
        await provider.send(d, MESSAGE)
        assert flaky.cut == 1
        ledger = f"{settings.key_prefix}sandbox:sends"
        field = f"sms:{d.notification_id}:1:2".encode()
        deadline = time.monotonic() + 10.0
        while await redis.hget(ledger, field) is None or provider._books._waiting:
            assert time.monotonic() < deadline, "the retried write never landed"
            await asyncio.sleep(0.05)
        assert await redis.hgetall(ledger) == {field: b"1"}
        await provider.send(d, MESSAGE)  # a second real send is still counted
        assert await redis.hgetall(ledger) == {field: b"2"}
    finally:
        await provider.close()


async def test_no_ledger_when_disabled(started, redis: Redis) -> None:
    provider, _, settings = await started(SmsSandbox(), sandbox_ledger=False)
    await provider.send(dispatch("sms", phone("9999")), MESSAGE)
    assert await redis.exists(f"{settings.key_prefix}sandbox:sends") == 0


async def test_close_drops_pending_receipts(started) -> None:
    provider, collector, _ = await started(VoiceSandbox())
    result = await provider.send(dispatch("voice", phone("0002")), MESSAGE)
    assert isinstance(result, Accepted)
    await provider.close()
    with pytest.raises(TimeoutError):
        await collector.wait_for(1, within_s=4.0 * SCALE)
    assert collector.receipts == []


async def test_redis_down_changes_no_outcome_and_the_ledger_catches_up(
    make_settings: Callable[..., ChannelSettings], tmp_path: Path
) -> None:
    """Issue 9, fault 11: the sandbox's bookkeeping failing (Redis down) used to turn every
    send into `failed`. A real provider does not depend on our Redis: the outcomes stay the
    ones the addresses ask for, and the ledger is written once Redis is back."""
    server = RedisServer(tmp_path / "redis.log")  # our own: this test stops it
    server.start()
    settings = make_settings("sms", redis_url=server.url, sandbox_time_scale=SCALE)
    redis = Redis.from_url(server.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    provider = SmsSandbox()
    collector = Collector()
    try:
        await provider.start(ProviderContext(settings, redis, collector, collector.inbound))
        server.kill()
        ds = [dispatch("sms", phone(s)) for s in ("9999", "0004", "0003")]
        _, results = await send_all(provider, ds)
        assert isinstance(results[2], Completed) and results[2].outcome == "rejected"
        assert all(isinstance(r, Accepted) for r in results[:2])
        received = await collector.wait_for(2, within_s=5.0)
        assert sorted(r.outcome for _, r in received) == ["delivered", "failed"]
        server.start()  # same port
        ledger = f"{settings.key_prefix}sandbox:sends"
        want = {f"sms:{d.notification_id}:0:1".encode(): b"1" for d in ds}
        deadline = time.monotonic() + 15.0
        while (got := await _quietly(redis.hgetall(ledger))) != want:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.2)
    finally:
        await provider.close()
        await redis.aclose()
        server.stop_sync()


async def _quietly(step: Awaitable[dict[bytes, bytes]]) -> dict[bytes, bytes] | None:
    try:
        return await step
    except Exception:
        return None
