"""Provider webhooks: Twilio's signature (its published example), 403 for bad or missing
signatures, replayed callbacks as no-ops, the rate limit's 429 losing nothing accepted, and
inbound SMS and missed calls becoming inquiries — on the real broker and Redis, with
the local Twilio server of tools/peers/twilio.py sending the webhooks as Twilio does."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition
from channel_support import collect, produce
from channel_support import dispatch as make_dispatch
from fake_twilio import twilio_service
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis.asyncio import Redis

from services.sms.twilio import TwilioSms
from services.voice.twilio import TwilioVoice
from shared.addresses import address_hash
from shared.channel.twilio import TwilioSettings
from shared.channel.webhooks import (
    TwilioWebhooks,
    twilio_signature,
    twiml,
    valid_twilio_signature,
)
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome, InquiryReceived

pytest_plugins = ["channel_support"]

MakeSettings = Callable[..., ChannelSettings]
DATA = {"loan_id": "L-1", "amount_due": "1200.00", "currency": "CNY", "due_date": "2026-12-01"}


async def read_all(settings: ChannelSettings, topic: str) -> list[Any]:
    """Every record on `topic` up to its end now (what was published before this call)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.kafka_topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        got: list[Any] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(records)
        return got
    finally:
        await consumer.stop()


def inbound_sms(sender: str, text: str, sid: str | None = None) -> dict[str, str]:
    """The parameters of Twilio's incoming-message webhook."""
    sid = sid or "SM" + uuid.uuid4().hex
    return {
        "AccountSid": "AC0",
        "ApiVersion": "2010-04-01",
        "Body": text,
        "From": sender,
        "To": "+15005550006",
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "NumMedia": "0",
    }


def test_signature_matches_twilios_published_example() -> None:
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675309",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
    }
    expected = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature("12345", url, params.items()) == expected
    assert valid_twilio_signature("12345", url, reversed(list(params.items())), expected)
    assert not valid_twilio_signature("12345", url, {**params, "Digits": "9"}.items(), expected)
    assert not valid_twilio_signature("12345", url + "&x=1", params.items(), expected)
    assert not valid_twilio_signature("54321", url, params.items(), expected)
    assert not valid_twilio_signature("12345", url, params.items(), None)


async def test_bad_or_missing_signatures_get_403_and_do_nothing(
    make_settings: MakeSettings,
) -> None:
    s = make_settings("sms")
    public = "https://sms.tongda.example.com/hooks"  # as Twilio calls us, through the LB
    async with twilio_service(s, TwilioSms, public_url=public) as (fake, _, url):
        target = f"{url}/twilio/sms/inbound"
        params = inbound_sms("+8613800138000", "when is my repayment due?")
        missing = await fake.post(target, params, signature="")
        forged = await fake.post(target, params, signature="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        # signed over the URL this service sees, not the public URL Twilio was given
        local = await fake.post(target, params)
        tampered = dict(params, Body="tampered")
        replayed_sig = await fake.post(
            target, tampered, signature=missing.signature or local.signature
        )
        good = await fake.post(
            target, params, signed_url=f"{public}/twilio/sms/inbound"
        )
        records = await read_all(s, s.topics.inquiries)
    for refused in (missing, forged, local, replayed_sig):
        assert refused.status == 403, refused
        assert '"error": "forbidden"' in refused.body
    assert good.status == 200 and good.body.endswith("<Response/>")
    assert len(records) == 1  # only the genuine one reached Kafka


async def test_inbound_sms_and_missed_call_become_inquiries(make_settings: MakeSettings) -> None:
    sms, voice = make_settings("sms"), make_settings("voice")
    key = sms.address_hash_key.get_secret_value().encode()
    async with twilio_service(sms, TwilioSms) as (fake, _, url):
        answer = await fake.post(
            f"{url}/twilio/sms/inbound", inbound_sms("+86 138 0013 8000", "还款日期是哪天？")
        )
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/xml")
        [record] = await collect(sms, sms.topics.inquiries, 1)
    inquiry = decode(record.value, InquiryReceived)
    assert (inquiry.channel, inquiry.text) == ("sms", "还款日期是哪天？")
    assert inquiry.from_ == "+8613800138000"
    assert record.key == address_hash(key, "+8613800138000").encode()

    call = {
        "AccountSid": "AC0",
        "CallSid": "CA" + uuid.uuid4().hex,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "From": "+8613900139000",
        "To": "+15005550006",
    }
    async with twilio_service(voice, TwilioVoice) as (fake, _, url):
        answer = await fake.post(f"{url}/twilio/voice/inbound", call)
        assert answer.status == 200 and "<Reject/>" in answer.body
        records = await collect(voice, voice.topics.inquiries, 2)  # the same topic as sms
    [missed] = [
        i for i in (decode(r.value, InquiryReceived) for r in records) if i.channel == "voice"
    ]
    assert (missed.channel, missed.text, missed.from_) == ("voice", "", "+8613900139000")


async def test_replayed_callbacks_are_no_ops(make_settings: MakeSettings) -> None:
    s = make_settings("sms")
    d = make_dispatch("sms", "+14155559999", data=DATA)
    unmatched = {"channel": "sms", "provider": "twilio"}
    async with twilio_service(s, TwilioSms) as (fake, _, url):
        await produce(s, s.topics.dispatch("sms"), [(d.customer_id.encode(), dumps(d))])
        callbacks = await fake.wait_callbacks(3)  # queued, sent, delivered
        delivered = next(c for c in callbacks if c.params["MessageStatus"] == "delivered")
        before = REGISTRY.get_sample_value("tongda_unmatched_receipts_total", unmatched) or 0
        replays = {"provider": "twilio", "route": "/twilio/sms/status", "result": "replay"}
        replays_before = REGISTRY.get_sample_value("tongda_webhook_callbacks_total", replays)
        replay = await fake.post(delivered.url, delivered.params)

        inbound = inbound_sms("+8613800138000", "I paid already")
        first = await fake.post(f"{url}/twilio/sms/inbound", inbound)
        again = await fake.post(f"{url}/twilio/sms/inbound", inbound)
        outcomes = await read_all(s, s.topics.router_inbox)
        inquiries = await read_all(s, s.topics.inquiries)
        after = REGISTRY.get_sample_value("tongda_unmatched_receipts_total", unmatched) or 0
        replays_after = REGISTRY.get_sample_value("tongda_webhook_callbacks_total", replays)
    assert (replay.status, first.status, again.status) == (200, 200, 200)
    mine = [o for o in (decode(r.value, AttemptOutcome) for r in outcomes)]
    assert [o.outcome for o in mine if o.notification_id == d.notification_id] == ["delivered"]
    assert after == before  # the replay never reached the receipt book
    assert replays_after == (replays_before or 0) + 1
    assert len(inquiries) == 1


async def test_rate_limit_answers_429_and_loses_nothing_accepted(
    make_settings: MakeSettings,
) -> None:
    s = make_settings("sms")
    limits = {"webhook_burst": 3, "webhook_rate_per_s": 0.2}
    async with twilio_service(s, TwilioSms, **limits) as (fake, _, url):
        senders = [f"+86138001380{i:02d}" for i in range(8)]
        answers = await asyncio.gather(
            *(
                fake.post(f"{url}/twilio/sms/inbound", inbound_sms(sender, f"message {i}"))
                for i, sender in enumerate(senders)
            )
        )
        inquiries = await read_all(s, s.topics.inquiries)
    accepted = [a for a in answers if a.status == 200]
    limited = [a for a in answers if a.status == 429]
    assert len(accepted) + len(limited) == len(answers)
    assert len(accepted) == 3 and all(int(a.headers["Retry-After"]) >= 1 for a in limited)
    published = {decode(r.value, InquiryReceived).text for r in inquiries}
    assert published == {a.params["Body"] for a in accepted}  # every 200 is on Kafka


async def test_a_failed_handler_releases_its_claim_so_the_retry_is_handled(
    redis: Redis,
) -> None:
    settings = TwilioSettings(
        account_sid="AC0", auth_token=SecretStr("secret"), public_url="https://x.example"
    )
    webhooks = TwilioWebhooks(settings)
    webhooks.start("secret", redis, "t-release:")
    calls: list[str] = []

    async def flaky(params: dict[str, str]) -> web.Response:
        calls.append(params["MessageStatus"])
        if len(calls) == 1:
            raise ConnectionError("Kafka is away")
        return twiml()

    app = web.Application()
    app.router.add_routes(
        [webhooks.route("/cb", flaky, lambda p: (p["MessageSid"], p["MessageStatus"]))]
    )
    params = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    headers = {
        "X-Twilio-Signature": twilio_signature("secret", "https://x.example/cb", params.items())
    }
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(3):
            async with http.post(server.make_url("/cb"), data=params, headers=headers) as resp:
                statuses.append(resp.status)
    assert statuses == [500, 200, 200]
    assert calls == ["delivered", "delivered"]  # the third was a replay: not handled
