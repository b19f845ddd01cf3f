"""Helpers for the channel tests on the session's real broker and Redis (tests/conftest.py):
settings with topics of their own per test, dispatches, publishing and collecting records.

Test modules import the helpers and load the `make_settings` fixture with
`pytest_plugins = ["channel_support"]` (hence PYTEST_DONT_REWRITE: imported before loading).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.config import ChannelSettings, Topics
from shared.contract.models import Channel, Dispatch
from shared.signing import Signer, internal_topics
from shared.topics import ensure_topics
from tests.signing_keys import SIGNING, SIGNING_ENV
from tools.devstack import free_port


def unique_topics(tag: str) -> Topics:
    """Topic names of their own for one test."""
    names = {f: f"{tag}.{getattr(Topics(), f)}" for f in Topics.model_fields}
    names["dispatch_prefix"] = f"{tag}.dispatch."
    return Topics(**names)


@pytest.fixture
def make_settings(broker: str, redis_server: str) -> Callable[..., ChannelSettings]:
    """Build ChannelSettings with topics, key prefix and group unique to the test."""
    tag = f"t{uuid.uuid4().hex[:10]}"

    def make(channel: Channel = "sms", **overrides: Any) -> ChannelSettings:
        values: dict[str, Any] = {
            "channel": channel,
            "kafka_bootstrap": broker,
            "redis_url": redis_server,
            "kafka_topic_partitions": 2,
            "kafka_session_timeout_ms": 1500,  # joins its group in ~0.75 s
            "topics": unique_topics(tag),
            "key_prefix": f"{tag}:",
            "consumer_group": f"{tag}-{channel}",
            "sandbox_time_scale": 0.05,
            "drain_timeout_s": 5.0,
            "http_host": "127.0.0.1",
            "http_port": free_port(),
            "log_format": "text",
            **SIGNING,
        }
        return ChannelSettings(**{**values, **overrides})

    return make


def dispatch(channel: Channel, recipient: str, **overrides: Any) -> Dispatch:
    """A valid dispatch of attempt 1 on leg 0 to `recipient`, with a fresh notification id."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "notification_id": f"n-{uuid.uuid4().hex[:12]}",
        "customer_id": f"c-{uuid.uuid4().hex[:8]}",
        "type": "repayment_due",
        "category": "reminder",
        "priority": "normal",
        "locale": "zh-CN",
        "channel": channel,
        "leg": 0,
        "attempt": 1,
        "recipient": recipient,
        "data": {
            "loan_id": "L-1",
            "amount_due": "1200.00",
            "currency": "CNY",
            "due_date": "2026-12-01",
        },
        "dispatched_at": now,
        "requested_at": now,
    }
    return Dispatch(**{**values, **overrides})


async def create_topics(settings: ChannelSettings) -> None:
    """Create the test's topics."""
    await ensure_topics(settings)


async def produce(
    settings: ChannelSettings, topic: str, records: list[tuple[bytes, bytes]]
) -> None:
    """Publish (key, value) records and wait until the broker has them; signed, as the router
    signs them, if `topic` is internal (a dispatch topic, the router inbox)."""
    signer = Signer.from_settings(settings) if topic in internal_topics(settings.topics) else None
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in records:
            headers = [signer.header(key, value)] if signer else []
            await producer.send_and_wait(topic, value=value, key=key, headers=headers)
    finally:
        await producer.stop()


async def collect(
    settings: ChannelSettings,
    topic: str,
    count: int,
    within_s: float = 15.0,
    until: Callable[[list[ConsumerRecord[bytes, bytes]]], bool] | None = None,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read `topic` from the start until `count` records (or `until` holds) or fail."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    got: list[ConsumerRecord[bytes, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.kafka_topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + within_s
        done = until or (lambda recs: len(recs) >= count)
        while not done(got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{len(got)} records on {topic} after {within_s} s: {got}")
            batch = await consumer.getmany(timeout_ms=int(min(left, 0.2) * 1000) + 1)
            for recs in batch.values():
                got.extend(recs)
        return got
    finally:
        await consumer.stop()


@asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[str]:
    """Run `app` (start-up included) on 127.0.0.1:`port`; clean it up (drain) on exit."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def wait_until(predicate: Callable[[], Any], within_s: float = 10.0) -> None:
    """Poll an async predicate until it is truthy, or fail at the deadline."""
    deadline = time.monotonic() + within_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within_s} s")
        await asyncio.sleep(0.02)


def service_env(settings: ChannelSettings) -> dict[str, str]:
    """The TONGDA_* variables running `python -m services.<channel>` with `settings`."""
    return dict(
        TONGDA_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        TONGDA_REDIS_URL=settings.redis_url,
        TONGDA_HTTP_HOST="127.0.0.1",
        TONGDA_KEY_PREFIX=settings.key_prefix,
        TONGDA_CONSUMER_GROUP=settings.group,
        TONGDA_KAFKA_SESSION_TIMEOUT_MS=str(settings.kafka_session_timeout_ms),
        TONGDA_SANDBOX_TIME_SCALE=str(settings.sandbox_time_scale),
        TONGDA_DRAIN_TIMEOUT_S=str(settings.drain_timeout_s),
        TONGDA_LOG_FORMAT="json",
        **SIGNING_ENV,
        **{f"TONGDA_TOPICS__{k.upper()}": v for k, v in settings.topics.model_dump().items()},
    )
