"""Signed internal topics (shared/signing.py) on the real broker and Redis: a forged or unsigned
record on the router inbox or a dispatch topic is dead-lettered `bad_signature` and changes
nothing; a record signed with an older key still listed is accepted; no key, no start."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from channel_support import collect, create_topics, dispatch, serving, wait_until
from redis.asyncio import Redis

from services.sms.providers import SmsSandbox
from shared.channel.app import create_app
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome
from shared.errors import ConfigError
from shared.signing import SIGNATURE_HEADER, Signer
from tests.router_support import Reader, engine_harness, header, value
from tests.signing_keys import KEYS

pytest_plugins = ["channel_support"]

OLD = Signer({"test-1": KEYS["test-1"].encode()}, "test-1")  # rotated out, still accepted
UNKNOWN = Signer({"evil": b"x" * 40}, "evil")  # a key tongda does not know
FORGED = Signer({"test-2": b"a guess at the key, which is not it...."}, "test-2")  # right id


def forgeries(key: bytes, raw: bytes) -> list[tuple[str, list[tuple[str, bytes]]]]:
    return [
        ("unsigned", []),
        ("unknown key id", [UNKNOWN.header(key, raw)]),
        ("wrong digest", [FORGED.header(key, raw)]),
        ("signature of another value", [OLD.header(key, raw + b" ")]),
    ]


async def send(
    bootstrap: str, topic: str, key: bytes, raw: bytes, headers: list[tuple[str, bytes]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, raw, key=key, headers=headers)
    finally:
        await producer.stop()


async def test_forged_inbox_records_are_dead_lettered_and_change_nothing(
    broker: str, redis_server: str
) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        async with Reader(broker, t.dispatch("email"), t.status, t.deadletter) as r:
            await h.publish(
                t.requested,
                {
                    "schema": "notification.requested/v1",
                    "id": "sig-1",
                    "type": "loan_approved",
                    "customer_id": "c1",
                    "occurred_at": datetime.now(UTC).isoformat(),
                    "data": {"amount": "20000.00", "currency": "CNY"},
                    "contacts": {"email": "li@example.com"},
                },
            )
            (sent,) = await r.take(t.dispatch("email"))
            Signer.from_settings(h.settings).verify(sent)  # the router signs what it dispatches
            d = value(sent)
            outcome = {
                "schema": "tongda.outcome/v1",
                "notification_id": d["notification_id"],
                "customer_id": d["customer_id"],
                "channel": "email",
                "leg": d["leg"],
                "attempt": d["attempt"],
                "outcome": "delivered",
                "provider": "attacker",
                "at": datetime.now(UTC).isoformat(),
            }
            raw = orjson.dumps(outcome)
            for _, headers in forgeries(b"c1", raw):
                await send(broker, t.router_inbox, b"c1", raw, headers)
            dead = await r.take(t.deadletter, 4)
            assert {header(m, "error") for m in dead} == {"bad_signature"}
            details = sorted(header(m, "error-detail") or "" for m in dead)
            assert any("unknown signing key id 'evil'" in x for x in details)
            assert any("0 tongda-signature headers" in x for x in details)
            await r.settle(1.0)
            assert not [m for m in r.seen if m.topic == t.status]  # still waiting
            state = orjson.loads(await h.redis.get(h.store.keys.state("sig-1", "c1")) or b"{}")
            assert state and not state.get("final")

            # the genuine outcome, signed with the older key still accepted
            await send(broker, t.router_inbox, b"c1", raw, [OLD.header(b"c1", raw)])
            (status,) = await r.take(t.status)
            assert value(status)["status"] == "delivered"


async def test_forged_dispatches_are_dead_lettered_and_never_sent(
    make_settings: Callable[..., ChannelSettings], redis: Redis
) -> None:
    s = make_settings("sms")
    await create_topics(s)
    topic = s.topics.dispatch("sms")
    forged = [dispatch("sms", "+8613800139999") for _ in forgeries(b"", b"")]
    genuine = dispatch("sms", "+8613800139999")
    async with serving(create_app(s, SmsSandbox()), s.http_port):
        for i, d in enumerate(forged):
            key, raw = d.customer_id.encode(), dumps(d)
            _, headers = forgeries(key, raw)[i]  # each dispatch forged one way
            await send(s.kafka_bootstrap, topic, key, raw, headers)
        key, raw = genuine.customer_id.encode(), dumps(genuine)
        await send(s.kafka_bootstrap, topic, key, raw, [OLD.header(key, raw)])

        async def genuine_sent() -> bool:
            return await redis.hlen(f"{s.key_prefix}sandbox:sends") >= 1

        await wait_until(genuine_sent)
        outcomes = await collect(s, s.topics.router_inbox, 1, within_s=10.0)
        dead = await collect(s, s.topics.deadletter, len(forged), within_s=10.0)
    sends = await redis.hgetall(f"{s.key_prefix}sandbox:sends")
    assert list(sends) == [f"sms:{genuine.notification_id}:0:1".encode()]
    assert [decode(o.value, AttemptOutcome).notification_id for o in outcomes] == [
        genuine.notification_id
    ]
    Signer.from_settings(s).verify(outcomes[0])  # outcomes are signed for the router
    assert {dict(m.headers)["error"] for m in dead} == {b"bad_signature"}
    refused = {orjson.loads(m.value)["notification_id"] for m in dead}
    assert refused == {d.notification_id for d in forged}


def test_no_key_no_start_and_rotation_needs_a_chosen_key() -> None:
    with pytest.raises(ConfigError, match="TONGDA_SIGNING_KEYS"):
        Signer.from_settings(ChannelSettings())
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        Signer.from_settings(ChannelSettings(signing_keys={"k": "short"}))  # type: ignore[arg-type]
    two: dict[str, Any] = {"signing_keys": KEYS}
    with pytest.raises(ConfigError, match="TONGDA_SIGNING_KEY_ID"):
        Signer.from_settings(ChannelSettings(**two))
    signer = Signer.from_settings(ChannelSettings(**two, signing_key_id="test-1"))
    assert signer.signature(b"k", b"v").startswith(b"test-1:")
    assert SIGNATURE_HEADER == "tongda-signature"


def test_the_signature_is_hmac_sha256_of_the_key_length_key_and_value() -> None:
    """The documented construction (shared/signing.py), so another implementation can check
    a record: HMAC-SHA256 over the key's length (4 bytes, big-endian), the key, the value;
    each key of a rotation signs with its own secret, and signing twice gives one answer."""
    import hmac

    signer = Signer({k: v.encode() for k, v in KEYS.items()}, "test-2")
    for key, raw in [(b"cust-1", b'{"a":1}'), (None, b"x"), (b"", None), (b"k" * 300, b"v")]:
        k = key or b""
        expected = hmac.new(
            KEYS["test-2"].encode(), len(k).to_bytes(4, "big") + k + (raw or b""), "sha256"
        ).hexdigest()
        assert signer.signature(key, raw) == b"test-2:" + expected.encode()
        assert signer.signature(key, raw) == b"test-2:" + expected.encode()
        assert OLD.signature(key, raw) != signer.signature(key, raw)
