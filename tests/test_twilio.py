"""The Twilio-style SMS and voice providers end to end: the channel service on the real
broker and Redis sends through the local Twilio server of tools/peers/twilio.py (via
tests/fake_twilio.py), whose signed status callbacks become the attempts' outcomes on the
router inbox."""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from channel_support import collect, produce
from channel_support import dispatch as make_dispatch
from fake_twilio import twilio_service
from redis.asyncio import Redis

from services.sms.providers import build_provider as build_sms
from services.sms.twilio import TwilioSms
from services.voice.providers import build_provider as build_voice
from services.voice.twilio import TwilioVoice
from shared.channel.provider import ProviderContext
from shared.channel.webhooks import valid_twilio_signature
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome, Channel, Dispatch
from shared.errors import ConfigError
from tools.devstack import free_port
from tools.peers.twilio import FakeTwilio

pytest_plugins = ["channel_support"]

MakeSettings = Callable[..., ChannelSettings]


async def outcomes(settings: ChannelSettings, ds: list[Dispatch]) -> dict[str, AttemptOutcome]:
    """Publish `ds` and wait for one outcome each; by recipient."""
    topic = settings.topics.dispatch(settings.channel)
    await produce(settings, topic, [(d.customer_id.encode(), dumps(d)) for d in ds])
    wanted = {d.notification_id for d in ds}

    def ids(records: list[Any]) -> list[str]:
        return [decode(r.value, AttemptOutcome).notification_id for r in records]

    records = await collect(
        settings, settings.topics.router_inbox, 0, until=lambda rs: wanted <= set(ids(rs))
    )
    every = [decode(r.value, AttemptOutcome) for r in records]
    got = [o for o in every if o.notification_id in wanted]
    assert len(got) == len(ds), got  # one outcome per attempt
    by_id = {o.notification_id: o for o in got}
    return {d.recipient: by_id[d.notification_id] for d in ds}


def number(suffix: str) -> str:
    return f"+1415555{suffix}"


DATA = {"loan_id": "L-1", "amount_due": "1200.00", "currency": "CNY", "due_date": "2026-12-01"}


def dispatch(channel: Channel, recipient: str, **overrides: Any) -> Dispatch:
    """A repayment reminder to `recipient` with every variable its template uses."""
    return make_dispatch(channel, recipient, data=DATA, **overrides)


async def test_sms_send_and_status_callbacks_give_each_outcome(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = make_settings("sms")
    expected = {
        "9999": ("delivered", "Twilio: delivered"),
        "0003": ("rejected", "Twilio 21211: The 'To' number +14155****0003 is not a valid"),
        "0010": ("rejected", "Twilio 21610: Attempt to send to unsubscribed recipient"),
        "0004": ("failed", "Twilio: failed (error 30008)"),
        "0005": ("rejected", "Twilio: undelivered (error 30005)"),
        "0006": ("failed", "Twilio: undelivered (error 30003)"),
    }
    ds = [dispatch("sms", number(suffix)) for suffix in expected]
    async with twilio_service(s, TwilioSms) as (fake, _, url):
        got = await outcomes(s, ds)
        # queued, sent and the final status for each of the four accepted messages
        callbacks = await fake.wait_callbacks(12)
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
            metrics = await resp.text()

    for suffix, (outcome, detail) in expected.items():
        o = got[number(suffix)]
        assert (o.outcome, o.provider) == (outcome, "twilio"), suffix
        assert o.detail is not None and o.detail.startswith(detail), (suffix, o.detail)
        assert (o.provider_message_id or "").startswith("SM") == (suffix in "9999 0004 0005 0006")
    assert all(c.status == 200 for c in callbacks), [(c.status, c.body) for c in callbacks]
    sent = fake.messages[0]
    assert sent["From"] == "+15005550006"
    assert sent["StatusCallback"] == f"{url}/twilio/sms/status"
    assert "2026" in sent["Body"]  # the rendered reminder, with its due date
    secret = fake.auth_token
    assert fake.auth_failures == 0
    assert secret not in caplog.text and secret not in metrics
    assert all(secret not in (o.detail or "") for o in got.values())
    assert "+14155550003" not in caplog.text  # numbers only masked


async def test_sms_429_fails_with_retry_after_and_holds_later_sends(
    make_settings: MakeSettings,
) -> None:
    s = make_settings("sms")
    limited, next_one = dispatch("sms", number("0429")), dispatch("sms", number("9999"))
    async with twilio_service(s, TwilioSms) as (fake, _, _):
        first = await outcomes(s, [limited])
        # Twilio asked for 7 s: the next send within them does not reach Twilio at all
        second = await outcomes(s, [next_one])
    o = first[limited.recipient]
    assert o.outcome == "failed"
    assert o.detail is not None and "RetryLater" in o.detail and "retry after 7 s" in o.detail
    o = second[next_one.recipient]
    assert o.outcome == "failed"
    assert o.detail is not None and "asked to wait" in o.detail
    assert [m["To"] for m in fake.messages] == [limited.recipient]


async def test_wrong_credentials_fail_without_showing_them(
    make_settings: MakeSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = make_settings("sms")
    wrong = "wrong-token-0123456789abcdef"
    d = dispatch("sms", number("9999"))
    async with twilio_service(s, TwilioSms, auth_token=wrong) as (fake, _, _):
        got = await outcomes(s, [d])
    o = got[d.recipient]
    assert (o.outcome, o.detail) == ("failed", "Twilio 20003: Authenticate")
    assert fake.auth_failures == 1
    assert wrong not in caplog.text and fake.account_sid not in (o.detail or "")
    assert "Twilio refused our credentials" in caplog.text


async def test_voice_calls_and_status_callbacks_give_each_outcome(
    make_settings: MakeSettings,
) -> None:
    s = make_settings("voice")
    expected = {
        "9999": ("delivered", "Twilio: answered; message played"),
        "0001": ("busy", "Twilio: busy"),
        "0002": ("no_answer", "Twilio: no answer"),
        "0003": ("rejected", "Twilio 21211:"),
        "0004": ("failed", "Twilio: call failed"),
        "0006": ("voicemail", "Twilio: answered by a machine (machine_end_beep)"),
        "0007": ("failed", "Twilio: call canceled"),
        "0008": ("rejected", "Twilio: call failed (SIP 404)"),
    }
    ds = [dispatch("voice", number(suffix), locale="zh-CN") for suffix in expected]
    async with twilio_service(s, TwilioVoice) as (fake, _, url):
        got = await outcomes(s, ds)
        callbacks = await fake.wait_callbacks(7)
    for suffix, (outcome, detail) in expected.items():
        o = got[number(suffix)]
        assert (o.outcome, o.provider) == (outcome, "twilio"), suffix
        assert o.detail is not None and o.detail.startswith(detail), (suffix, o.detail)
    assert all(c.status == 200 for c in callbacks)
    call = next(c for c in fake.calls if c["To"] == number("9999"))
    assert call["MachineDetection"] == "Enable"
    assert call["StatusCallback"] == f"{url}/twilio/voice/status"
    root = ET.fromstring(call["Twiml"])
    assert root.tag == "Response" and [e.tag for e in root] == ["Say"]
    assert root[0].get("language") == "zh-CN" and "2026" in (root[0].text or "")


async def test_configuration_from_env_and_a_mounted_token_file(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    make_settings: MakeSettings,
    redis: Redis,
) -> None:
    s = make_settings("voice", provider="twilio")
    monkeypatch.setenv("TONGDA_TWILIO_ACCOUNT_SID", "AC123")
    monkeypatch.setenv("TONGDA_TWILIO_PUBLIC_URL", "https://voice.example.com")
    provider = build_voice(s)
    assert isinstance(provider, TwilioVoice)

    async def noop(*_: object) -> bool:
        return True

    ctx = ProviderContext(s, redis, noop, noop)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="TONGDA_TWILIO_FROM_NUMBER"):
        await provider.start(ctx)

    monkeypatch.setenv("TONGDA_TWILIO_FROM_NUMBER", "+15005550006")
    with pytest.raises(ConfigError, match="TONGDA_TWILIO_AUTH_TOKEN is not set"):
        await build_voice(s).start(ctx)

    secret = tmp_path / "auth-token"
    secret.write_text("token-from-file\n")
    monkeypatch.setenv("TONGDA_TWILIO_AUTH_TOKEN_FILE", str(secret))
    provider = build_voice(s)
    assert isinstance(provider, TwilioVoice)
    assert provider.settings.token().get_secret_value() == "token-from-file"

    monkeypatch.setenv("TONGDA_TWILIO_WEBHOOK_BURST", "many")
    with pytest.raises(ConfigError, match="TONGDA_TWILIO_WEBHOOK_BURST") as err:
        build_sms(s.model_copy(update={"channel": "sms"}))
    assert "many" not in str(err.value)


async def test_the_demo_steering_answers_like_the_sms_sandbox() -> None:
    """`steering="contract"` (the Twilio peer of `make demo PROVIDERS=local`): …0003 refused
    with 21211, …0004 failed, every other number delivered (…0005 too, unlike the tests'
    table); the status callbacks carry a signature our webhook check accepts."""
    got: list[tuple[dict[str, str], bool]] = []
    arrived = asyncio.Event()
    token = "demo-token-0123456789abcdef"

    async def callback(request: web.Request) -> web.Response:
        params = {k: str(v) for k, v in (await request.post()).items()}
        signature = request.headers.get("X-Twilio-Signature")
        ok = valid_twilio_signature(token, str(request.url), params.items(), signature)
        got.append((params, ok))
        if params["MessageStatus"] in ("delivered", "failed", "undelivered"):
            arrived.set()
        return web.Response(text="<Response/>", content_type="text/xml")

    app = web.Application()
    app.router.add_post("/status", callback)
    receiver = web.AppRunner(app, access_log=None)
    await receiver.setup()
    port = free_port()
    await web.TCPSite(receiver, "127.0.0.1", port).start()
    fake = FakeTwilio("AC" + "1" * 32, token, steering="contract")
    base = await fake.start(free_port())
    url = f"{base}/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    answers: dict[str, tuple[int, dict[str, Any]]] = {}
    finals: dict[str, str] = {}
    try:
        auth = {"Authorization": aiohttp.encode_basic_auth(fake.account_sid, token)}
        async with aiohttp.ClientSession(headers=auth) as http:
            for suffix in ("0003", "0004", "0005", "9999"):
                form = {
                    "To": number(suffix),
                    "From": "+15005550006",
                    "Body": "code 318507",
                    "StatusCallback": f"http://127.0.0.1:{port}/status",
                }
                async with http.post(url, data=form) as resp:
                    answers[suffix] = (resp.status, await resp.json())
                if resp.status == 201:
                    await asyncio.wait_for(arrived.wait(), 10)
                    arrived.clear()
                    finals[suffix] = got[-1][0]["MessageStatus"]
    finally:
        await fake.close()
        await receiver.cleanup()
    assert answers["0003"][0] == 400 and answers["0003"][1]["code"] == 21211
    assert finals == {"0004": "failed", "0005": "delivered", "9999": "delivered"}
    assert len(got) == 9 and all(ok for _, ok in got)  # queued, sent, final for each
