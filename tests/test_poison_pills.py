"""Poison pills of issue 9 (2, 3, 5 and 6), each through the real broker and Redis: one bad
record costs one dead letter, never the pipeline, and what the API accepts is routed."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaProducer
from channel_support import collect, create_topics, dispatch, serving
from pydantic import SecretStr

from services.router.api import create_api
from services.router.plans import load_plans
from services.sms.providers import SmsSandbox
from shared.channel.app import create_app
from shared.config import ChannelSettings, CommonSettings
from shared.contract.codec import MAX_INTERNAL_VALUE_BYTES, MAX_VALUE_BYTES, decode, dumps
from shared.contract.models import CHANNELS, Dispatch
from shared.signing import Signer
from shared.topics import topic_specs
from tests.router_support import Harness, Reader, engine_harness, header, value

pytest_plugins = ["channel_support"]

MakeSettings = Callable[..., ChannelSettings]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
TOKEN = "test-token-poison"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def nested(levels: int) -> bytes:
    """A JSON object nested `levels` deep, as bytes (built flat: no recursion)."""
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


# what the overdue_notice messages need
DATA = {"amount_due": "1200.00", "currency": "CNY", "due_date": "2026-12-01"}


def request(nid: str, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schema": "notification.requested/v1",
        "id": nid,
        "type": "overdue_notice",
        "customer_id": "pill-c1",
        "occurred_at": datetime.now(UTC).isoformat(),
        "contacts": {"phone": "+8613800000001"},
        "data": DATA,
    }
    out.update(kw)
    return out


def request_with_raw_data(nid: str, extra: bytes, *, schema: bool = True) -> bytes:
    """A request whose `data` holds the given JSON bytes as `data.x` (spliced in: they may be
    too deep for any encoder)."""
    body = request(nid)
    del body["data"]
    if not schema:
        del body["schema"]
    return (
        orjson.dumps(body)[:-1] + b',"data":' + orjson.dumps(DATA)[:-1] + b',"x":' + extra + b"}}"
    )


# --- 3: every topic has a size limit ---------------------------------------------------------


def test_every_topic_tongda_uses_has_a_size_limit() -> None:
    settings = CommonSettings(kafka_max_request_bytes=5_000_000)
    specs = topic_specs(settings)
    assert {s.name for s in specs} >= {settings.topics.dispatch(c) for c in CHANNELS}
    for spec in specs:
        if spec.name.endswith("__assignor-__leader"):
            continue  # faust's own; tongda writes nothing there
        assert spec.config.get("max.message.bytes") == "5000000", spec.name


def test_size_limits_agree_along_the_path() -> None:
    settings = CommonSettings()
    # a request accepted makes a dispatch accepted: data re-serialised plus its envelope
    assert MAX_INTERNAL_VALUE_BYTES >= 4 * MAX_VALUE_BYTES + 64 * 1024
    # every value tongda accepts fits its producer, its fetches and its topics, with headers
    assert settings.kafka_max_request_bytes >= MAX_INTERNAL_VALUE_BYTES + 64 * 1024


# --- 2, 3 on a channel service ---------------------------------------------------------------


async def test_channel_dead_letters_huge_and_deep_dispatches_and_moves_on(
    make_settings: MakeSettings,
) -> None:
    limit = 256 * 1024
    settings = make_settings("sms", kafka_max_request_bytes=limit)
    await create_topics(settings)
    topic = settings.topics.dispatch("sms")
    huge = b"x" * (3 * limit)  # bigger than the service may produce: cannot go out whole
    deep = dispatch("sms", "+8613800130001")
    deep_raw = dumps(deep).replace(b'"data":{', b'"data":{"deep":' + nested(300) + b",", 1)
    good = dispatch("sms", "+8613800130001")
    # an upstream producer with a bigger limit than the service (the broker lets it through)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, max_request_size=4 << 20
    )
    await producer.start()
    sign = Signer.from_settings(settings)  # as the router signs dispatches
    try:
        huge_meta = await producer.send_and_wait(
            topic, huge, key=b"k", partition=0, headers=[sign.header(b"k", huge)]
        )
        await producer.send_and_wait(
            topic, deep_raw, key=b"k", partition=0, headers=[sign.header(b"k", deep_raw)]
        )
        good_raw = dumps(good)
        await producer.send_and_wait(
            topic, good_raw, key=b"k", partition=0, headers=[sign.header(b"k", good_raw)]
        )
    finally:
        await producer.stop()
    app = create_app(settings, SmsSandbox())
    async with serving(app, settings.http_port):
        dead = await collect(settings, settings.topics.deadletter, 2, within_s=20)
        outcomes = await collect(
            settings,
            settings.topics.router_inbox,
            1,
            within_s=20,
            until=lambda rs: any(good.notification_id.encode() in r.value for r in rs),
        )
    assert outcomes
    by_error = {header(r, "error"): r for r in dead}
    assert set(by_error) == {"malformed_json", "too_deep"}
    cut = by_error["malformed_json"]
    assert header(cut, "truncated") == "true"
    assert header(cut, "original-size") == str(len(huge))
    assert header(cut, "source-offset") == str(huge_meta.offset)
    assert header(cut, "source-topic") == topic
    assert 0 < len(cut.value) < limit and huge.startswith(cut.value)
    too_deep = by_error["too_deep"]
    assert too_deep.value == deep_raw  # small enough: dead-lettered whole
    assert header(too_deep, "truncated") is None
    assert (header(too_deep, "error-detail") or "").startswith("data: nested more than 64")


# --- 2, 6 in the router ----------------------------------------------------------------------


async def test_router_dead_letters_a_deep_request_and_routes_the_next(
    broker: str, redis_server: str
) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        async with Reader(broker, t.deadletter, t.dispatch("voice")) as r:
            for levels in (300, 1000):
                await h.publish(
                    t.requested, request_with_raw_data(f"deep-{levels}", nested(levels))
                )
            await h.publish(t.requested, request("after-deep"))
            dead = await r.take(t.deadletter, 2)
            (voice,) = await r.take(t.dispatch("voice"))
    assert [header(m, "error") for m in dead] == ["too_deep", "too_deep"]
    assert value(voice)["notification_id"] == "after-deep"


async def test_a_request_at_the_size_limit_makes_a_dispatch_the_channel_accepts(
    broker: str, redis_server: str
) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        # numbers written short that re-serialise long: `1E9` becomes `1000000000.0`
        numbers = b"[" + b",".join([b"1E9"] * 200_000) + b"]"
        text = "x" * (MAX_VALUE_BYTES - len(numbers) - 2_000)
        extra = b'{"note":' + orjson.dumps(text) + b',"numbers":' + numbers + b"}"
        raw = request_with_raw_data("big-1", extra)
        assert MAX_VALUE_BYTES - 4_000 < len(raw) <= MAX_VALUE_BYTES
        async with Reader(broker, t.dispatch("voice"), t.deadletter) as r:
            await h.publish(t.requested, raw)
            (voice,) = await r.take(t.dispatch("voice"), timeout_s=30)
            assert not [m for m in r.seen if m.topic == t.deadletter]
    assert len(voice.value) > MAX_VALUE_BYTES  # the envelope and the numbers made it grow
    assert len(voice.value) <= MAX_INTERNAL_VALUE_BYTES
    got = decode(voice.value, Dispatch)  # what the channel service runs on it
    assert got.notification_id == "big-1" and got.data["x"]["note"] == text


# --- 2, 5 on the HTTP API --------------------------------------------------------------------


@pytest.fixture
async def api(
    broker: str, redis_server: str, aiohttp_client: ClientFactory
) -> AsyncIterator[tuple[TestClient[Any, Any], Harness]]:
    async with engine_harness(broker, redis_server) as h:
        settings = h.settings.model_copy(update={"api_token": SecretStr(TOKEN)})
        app = create_api(settings, h.producer, h.redis, load_plans(), h.desk, [])
        yield await aiohttp_client(app), h


async def test_api_answers_400_naming_data_for_deep_nesting(
    api: tuple[TestClient[Any, Any], Harness],
) -> None:
    client, _ = api
    for levels in (65, 300, 1000, 2000):
        raw = request_with_raw_data(f"api-deep-{levels}", nested(levels))
        resp = await client.post("/v1/notifications", data=raw, headers=AUTH)
        assert resp.status == 400, levels
        answer = await resp.json()
        assert answer["error"] == "too_deep"
        # orjson itself stops at 1,024 levels: then the whole value is named
        assert answer["field"] == ("data" if levels <= 1000 else "(value)")


async def test_api_refuses_a_body_whose_record_would_exceed_the_limit(
    api: tuple[TestClient[Any, Any], Harness], broker: str
) -> None:
    client, h = api
    # the body fits; the record the API would publish (schema added) does not
    head = request_with_raw_data("api-edge", b'""', schema=False)
    raw = request_with_raw_data(
        "api-edge", b'"' + b"x" * (MAX_VALUE_BYTES - len(head)) + b'"', schema=False
    )
    assert len(raw) == MAX_VALUE_BYTES
    # and numbers written short that re-serialise long
    head = request_with_raw_data("api-numbers", b"[]")
    short = request_with_raw_data(
        "api-numbers", b"[" + b",".join([b"1E9"] * ((MAX_VALUE_BYTES - len(head)) // 4)) + b"]"
    )
    assert len(short) <= MAX_VALUE_BYTES
    async with Reader(broker, h.settings.topics.requested) as r:
        for payload in (raw, short):
            resp = await client.post("/v1/notifications", data=io.BytesIO(payload), headers=AUTH)
            assert resp.status == 413, await resp.text()
            assert (await resp.json())["error"] == "too_large"
        ok = await client.post("/v1/notifications", json=request("api-fine"), headers=AUTH)
        assert ok.status == 202
        (published,) = await r.take(h.settings.topics.requested)
    assert value(published)["id"] == "api-fine"  # only what was accepted went out
