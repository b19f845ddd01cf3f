"""The FCM HTTP v1 push provider against tests/fake_fcm.py (a token endpoint that verifies
the service account's JWT, and messages:send with documented error bodies), with real Redis:
token caching and refresh, outcome mapping, dead tokens, Retry-After, no secrets in logs."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from channel_support import collect, create_topics, produce, serving
from channel_support import dispatch as make_dispatch
from redis.asyncio import Redis

from services.push.fcm import FcmPush, FcmSettings
from services.push.providers import build_provider
from shared.channel.app import create_app
from shared.channel.http_provider import RetryLater
from shared.channel.provider import Completed, Inbound, ProviderContext, Receipt
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome, Dispatch
from shared.errors import ConfigError
from shared.push_tokens import dead_token_key, is_token_dead
from shared.templates import Message
from tools.devstack import free_port
from tools.peers.fcm import FakeFcm, service_account

pytest_plugins = ["channel_support"]

MakeSettings = Callable[..., ChannelSettings]
MESSAGE = Message(subject="Repayment due", body="Your repayment is due on 2026-12-01.")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Fcm:
    fake: FakeFcm
    provider: FcmPush
    clock: Clock
    settings: ChannelSettings
    fcm_settings: FcmSettings
    key_file: Path
    private_key: str


async def _no_receipt(_: Receipt) -> bool:
    raise AssertionError("FCM answers synchronously: no receipts")


async def _no_inbound(_: Inbound) -> str:
    raise AssertionError("push takes no inbound messages")


@pytest.fixture
async def fcm(
    make_settings: MakeSettings, redis: Redis, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    """Start the fake FCM and a started FcmPush against it (more with the factory)."""
    runners: list[web.AppRunner] = []
    providers: list[FcmPush] = []

    async def start(**overrides: Any) -> Fcm:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        project = f"tongda-{uuid.uuid4().hex[:6]}"
        info, public_key = service_account(project, f"{base}/token")
        fake = FakeFcm(project, info["client_email"], public_key, token_url=f"{base}/token")
        runner = web.AppRunner(fake.app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        key_file = tmp_path / f"{project}.json"
        key_file.write_bytes(orjson.dumps(info))
        values: dict[str, Any] = {"service_account_file": key_file, "base_url": base}
        fcm_settings = FcmSettings(**{**values, **overrides})
        clock = Clock()
        provider = FcmPush(fcm_settings, clock)
        settings = make_settings("push", provider="fcm")
        await provider.start(ProviderContext(settings, redis, _no_receipt, _no_inbound))
        providers.append(provider)
        return Fcm(fake, provider, clock, settings, fcm_settings, key_file, info["private_key"])

    yield start
    for provider in providers:
        await provider.close()
    for runner in runners:
        await runner.cleanup()


DATA = {"loan_id": "L-1", "amount_due": "1200.00", "currency": "CNY", "due_date": "2026-12-01"}


def push(token: str, **overrides: Any) -> Dispatch:
    """A repayment reminder to a device token, with every variable its template uses."""
    return make_dispatch("push", token, data=DATA, **overrides)


async def test_one_token_exchange_for_many_sends_then_a_refresh_after_expiry(fcm: Any) -> None:
    f: Fcm = await fcm()
    results = await asyncio.gather(
        *(f.provider.send(push(f"device-{i}"), MESSAGE) for i in range(20))
    )
    assert all(isinstance(r, Completed) and r.outcome == "delivered" for r in results)
    names = {r.provider_message_id for r in results if isinstance(r, Completed)}
    assert len(names) == 20 and all(
        (n or "").startswith(f"projects/{f.fake.project_id}/messages/") for n in names
    )
    assert f.fake.exchanges == 1 and f.fake.refused_grants == []
    sent = f.fake.sends[0]
    assert sent["notification"] == {"title": MESSAGE.subject, "body": MESSAGE.body}
    assert set(sent["data"]) == {"notification_id", "type", "category"}

    f.clock.now += 3599 - 300 - 1  # still inside the lifetime minus the margin
    await f.provider.send(push("device-x"), MESSAGE)
    assert f.fake.exchanges == 1
    f.clock.now += 2  # past it: a fresh token before the old one really expires
    await f.provider.send(push("device-y"), MESSAGE)
    assert f.fake.exchanges == 2


async def test_a_token_fcm_refuses_is_replaced_once(fcm: Any) -> None:
    f: Fcm = await fcm()
    await f.provider.send(push("device-1"), MESSAGE)
    f.fake.revoke_all()  # FCM answers 401 UNAUTHENTICATED for the cached token
    result = await f.provider.send(push("device-2"), MESSAGE)
    assert isinstance(result, Completed) and result.outcome == "delivered"
    assert f.fake.exchanges == 2


async def test_unregistered_and_invalid_tokens_are_rejected_and_marked_dead(
    fcm: Any, redis: Redis
) -> None:
    f: Fcm = await fcm()
    expected = {
        "unregistered-abc123456": "unregistered token",
        "invalid-abc123456": "invalid token",
        "mismatch-abc123456": "token of another sender",
    }
    for token, detail in expected.items():
        d = push(token)
        assert await f.provider.send(d, MESSAGE) == Completed("rejected", None, detail)
        assert await is_token_dead(redis, f.settings, d.customer_id, token)
        assert not await is_token_dead(redis, f.settings, "another-customer", token)
        key = dead_token_key(f.settings, d.customer_id, token)
        assert token not in key and 0 < await redis.ttl(key) <= f.fcm_settings.dead_token_ttl_s
    # the customer's dead token is not sent to FCM again; another customer's still is
    d = push("unregistered-xyz123456")
    assert await f.provider.send(d, MESSAGE) == Completed("rejected", None, "unregistered token")
    sends = len(f.fake.sends)
    same = push(d.recipient, customer_id=d.customer_id)
    known = Completed("rejected", None, "unregistered token (known dead)")
    assert await f.provider.send(same, MESSAGE) == known
    assert len(f.fake.sends) == sends
    await f.provider.send(push(d.recipient), MESSAGE)
    assert len(f.fake.sends) == sends + 1


async def test_429_and_5xx_fail_with_retry_after_honoured(fcm: Any) -> None:
    f: Fcm = await fcm()
    with pytest.raises(RetryLater) as err:
        await f.provider.send(push("quota-abc123456"), MESSAGE)
    assert err.value.delay_s == 9 and "QUOTA_EXCEEDED" in str(err.value)
    sends = len(f.fake.sends)
    with pytest.raises(RetryLater, match="asked to wait") as held:
        await f.provider.send(push("device-1"), MESSAGE)  # within FCM's 9 s: not sent
    assert 0 < held.value.delay_s <= 9 and len(f.fake.sends) == sends
    f.clock.now += 9
    result = await f.provider.send(push("device-1"), MESSAGE)
    assert isinstance(result, Completed) and result.outcome == "delivered"

    with pytest.raises(RetryLater) as err:
        await f.provider.send(push("unavailable-abc123456"), MESSAGE)
    assert err.value.delay_s == 4
    f.clock.now += 4
    with pytest.raises(RetryLater) as err:
        await f.provider.send(push("internal-abc123456"), MESSAGE)
    assert err.value.delay_s == 5  # no Retry-After: the default


async def test_wrong_key_fails_without_showing_credentials(
    fcm: Any, tmp_path: Path, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    f: Fcm = await fcm()
    await f.provider.send(push("device-1"), MESSAGE)
    [access] = list(f.fake.tokens)
    # the same account with another key: the token endpoint refuses the JWT's signature
    other, _ = service_account(f.fake.project_id, f.fake.token_url)
    info = orjson.loads(f.key_file.read_bytes())
    info["private_key"] = other["private_key"]
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(orjson.dumps(info))
    provider = FcmPush(f.fcm_settings.model_copy(update={"service_account_file": wrong}))
    await provider.start(ProviderContext(f.settings, redis, _no_receipt, _no_inbound))
    try:
        with pytest.raises(RuntimeError) as err:
            await provider.send(push("device-2"), MESSAGE)
    finally:
        await provider.close()
    message = str(err.value)
    assert message == (
        "OAuth2 token exchange: HTTP 400 invalid_grant: Invalid JWT Signature."
    )
    assert f.fake.refused_grants == ["Invalid JWT Signature."]
    key_lines = [*f.private_key.splitlines()[1:3], *other["private_key"].splitlines()[1:3]]
    for secret in (access, *key_lines):
        assert secret not in message and secret not in caplog.text


async def test_configuration_errors_never_quote_the_key(
    make_settings: MakeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis: Redis
) -> None:
    s = make_settings("push", provider="fcm")
    ctx = ProviderContext(s, redis, _no_receipt, _no_inbound)
    with pytest.raises(ConfigError, match="TONGDA_FCM_SERVICE_ACCOUNT_FILE"):
        await build_provider(s).start(ctx)
    bad = tmp_path / "sa.json"
    bad.write_text('{"private_key": "-----BEGIN PRIVATE KEY-----\\nc2VjcmV0\\n", ')
    monkeypatch.setenv("TONGDA_FCM_SERVICE_ACCOUNT_FILE", str(bad))
    with pytest.raises(ConfigError) as err:
        await build_provider(s).start(ctx)
    assert "c2VjcmV0" not in str(err.value)
    bad.write_text(
        orjson.dumps(
            {"client_email": "a@b", "token_uri": "http://x/token", "private_key": "c2VjcmV0"}
        ).decode()
    )
    with pytest.raises(ConfigError, match="not a PEM key") as err:
        await build_provider(s).start(ctx)
    assert "c2VjcmV0" not in str(err.value)
    info, _ = service_account("", "http://127.0.0.1:1/token")
    bad.write_bytes(orjson.dumps(info))
    with pytest.raises(ConfigError, match="TONGDA_FCM_PROJECT_ID"):
        await build_provider(s).start(ctx)


async def test_push_service_end_to_end(fcm: Any, redis: Redis) -> None:
    f: Fcm = await fcm()
    s = f.settings
    await create_topics(s)
    good, dead = push("device-abcdef123456"), push("unregistered-abcdef123456")
    async with serving(create_app(s, FcmPush(f.fcm_settings)), s.http_port):
        await produce(
            s, s.topics.dispatch("push"), [(d.customer_id.encode(), dumps(d)) for d in (good, dead)]
        )
        records = await collect(s, s.topics.router_inbox, 2)
    got = {o.notification_id: o for o in (decode(r.value, AttemptOutcome) for r in records)}
    assert got[good.notification_id].outcome == "delivered", got[good.notification_id].detail
    assert (got[good.notification_id].provider_message_id or "").startswith("projects/")
    assert (got[dead.notification_id].outcome, got[dead.notification_id].detail) == (
        "rejected",
        "unregistered token",
    )
    assert got[dead.notification_id].provider == "fcm"
    assert await is_token_dead(redis, s, dead.customer_id, dead.recipient)
