"""The APNs push provider over real HTTP/2 against tests/fake_apns.py, with real Redis:
provider token reuse and renewal, outcome mapping, dead tokens, throttling, configuration."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from channel_support import dispatch as make_dispatch
from fake_apns import FakeApns, signing_key
from pydantic import SecretStr
from redis.asyncio import Redis

from services.push.apns import ApnsPush, ApnsSettings
from services.push.providers import build_provider
from shared.channel.http_provider import RetryLater
from shared.channel.provider import Completed, Inbound, ProviderContext, Receipt
from shared.config import ChannelSettings
from shared.contract.models import Dispatch
from shared.errors import ConfigError
from shared.push_tokens import is_token_dead
from shared.templates import Message
from tools.devstack import free_port

pytest_plugins = ["channel_support"]

MESSAGE = Message(subject="Repayment due", body="Your repayment is due on 2026-12-01.")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Apns:
    fake: FakeApns
    provider: ApnsPush
    clock: Clock
    settings: ChannelSettings
    pem: str


async def _no_receipt(_: Receipt) -> bool:
    raise AssertionError("APNs answers synchronously: no receipts")


async def _no_inbound(_: Inbound) -> str:
    raise AssertionError("push takes no inbound messages")


@pytest.fixture
async def apns(
    make_settings: Callable[..., ChannelSettings], redis: Redis, tmp_path: Path
) -> AsyncIterator[Apns]:
    pem, public_key = signing_key()
    fake = FakeApns(public_key, key_id="ABC123DEFG", team_id="TEAM123456", topic="com.tongda.app")
    base = await fake.start(free_port())
    key_file = tmp_path / "AuthKey_ABC123DEFG.p8"
    key_file.write_text(pem)
    settings = ApnsSettings(
        key_file=key_file,
        key_id=fake.key_id,
        team_id=fake.team_id,
        topic=fake.topic,
        base_url=base,
    )
    clock = Clock()
    provider = ApnsPush(settings, clock)
    channel_settings = make_settings("push", provider="apns")
    await provider.start(ProviderContext(channel_settings, redis, _no_receipt, _no_inbound))
    try:
        yield Apns(fake, provider, clock, channel_settings, pem)
    finally:
        await provider.close()
        await fake.close()


def push(token: str, **overrides: Any) -> Dispatch:
    return make_dispatch("push", token, **overrides)


def device() -> str:
    return uuid.uuid4().hex * 2  # 64 hex characters, like a device token


async def test_sends_over_http2_with_one_provider_token_renewed_when_due(apns: Apns) -> None:
    results = await asyncio.gather(
        *(apns.provider.send(push(device(), priority="urgent"), MESSAGE) for _ in range(10))
    )
    assert all(isinstance(r, Completed) and r.outcome == "delivered" for r in results)
    ids = {r.provider_message_id for r in results if isinstance(r, Completed)}
    assert len(ids) == 10 and None not in ids  # the apns-id headers
    assert len(apns.fake.provider_tokens) == 1 and apns.provider.tokens.issued == 1
    sent = apns.fake.sends[0]
    assert sent["payload"]["aps"]["alert"] == {"title": MESSAGE.subject, "body": MESSAGE.body}
    assert sent["headers"]["apns-priority"] == "10"
    assert sent["headers"]["apns-push-type"] == "alert"

    apns.clock.now += apns.provider.settings.token_refresh_s
    await apns.provider.send(push(device()), MESSAGE)
    assert apns.provider.tokens.issued == 2 and len(apns.fake.provider_tokens) == 2


async def test_an_expired_provider_token_is_renewed_once(apns: Apns) -> None:
    await apns.provider.send(push(device()), MESSAGE)
    apns.fake.expire_provider_tokens()
    result = await apns.provider.send(push(device()), MESSAGE)
    assert isinstance(result, Completed) and result.outcome == "delivered"
    assert apns.provider.tokens.issued == 2


async def test_dead_device_tokens_are_rejected_and_remembered(apns: Apns, redis: Redis) -> None:
    expected = {
        "unregistered" + device(): "unregistered token",
        "bad" + device(): "invalid token",
        "othertopic" + device(): "token of another app",
    }
    for token, detail in expected.items():
        d = push(token)
        assert await apns.provider.send(d, MESSAGE) == Completed("rejected", None, detail)
        assert await is_token_dead(redis, apns.settings, d.customer_id, token)
    sends = len(apns.fake.sends)
    again = push(d.recipient, customer_id=d.customer_id)
    known = Completed("rejected", None, "unregistered token (known dead)")
    assert await apns.provider.send(again, MESSAGE) == known
    assert len(apns.fake.sends) == sends


async def test_throttling_fails_the_attempt_and_an_outage_holds_every_send(apns: Apns) -> None:
    with pytest.raises(RetryLater, match="TooManyRequests"):
        await apns.provider.send(push("busy" + device()), MESSAGE)
    # one device's rate is exceeded: other devices are still sent to
    result = await apns.provider.send(push(device()), MESSAGE)
    assert isinstance(result, Completed) and result.outcome == "delivered"

    with pytest.raises(RetryLater, match="ServiceUnavailable") as err:
        await apns.provider.send(push("down" + device()), MESSAGE)
    sends = len(apns.fake.sends)
    with pytest.raises(RetryLater, match="asked to wait"):
        await apns.provider.send(push(device()), MESSAGE)
    assert len(apns.fake.sends) == sends
    apns.clock.now += err.value.delay_s
    result = await apns.provider.send(push(device()), MESSAGE)
    assert isinstance(result, Completed) and result.outcome == "delivered"


async def test_configuration_errors_never_quote_the_key(
    make_settings: Callable[..., ChannelSettings],
    monkeypatch: pytest.MonkeyPatch,
    redis: Redis,
) -> None:
    s = make_settings("push", provider="apns")
    ctx = ProviderContext(s, redis, _no_receipt, _no_inbound)
    with pytest.raises(ConfigError, match="TONGDA_APNS_KEY_ID"):
        await build_provider(s).start(ctx)
    monkeypatch.setenv("TONGDA_APNS_KEY_ID", "ABC123DEFG")
    monkeypatch.setenv("TONGDA_APNS_TEAM_ID", "TEAM123456")
    monkeypatch.setenv("TONGDA_APNS_TOPIC", "com.tongda.app")
    with pytest.raises(ConfigError, match="TONGDA_APNS_KEY_FILE"):
        await build_provider(s).start(ctx)
    monkeypatch.setenv("TONGDA_APNS_KEY", "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n")
    with pytest.raises(ConfigError, match="not a PEM") as err:
        await build_provider(s).start(ctx)
    assert "c2VjcmV0" not in str(err.value)
    pem, _ = signing_key()
    provider = ApnsPush(ApnsSettings(key=SecretStr(pem), key_id="K", team_id="T", topic="t"))
    await provider.start(ctx)
    await provider.close()
