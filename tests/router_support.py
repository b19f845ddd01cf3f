"""Helpers for router tests: an isolated engine (own topics, key prefix, group) on the real
broker and Redis, and readers that await records on a topic."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from services.router.core import build_core
from services.router.engine import RecoveringListener, RouterEngine
from services.router.inquiries import InquiryDesk
from services.router.outbox import Outbox
from services.router.plans import load_plans
from services.router.policy import load_policy
from services.router.scheduler import Scheduler
from services.router.store import Store
from shared.config import RouterSettings, Topics
from shared.contract.models import CHANNELS
from shared.kafka import make_consumer, make_producer
from shared.redis import make_redis
from shared.signing import Signer, internal_topics
from shared.topics import ensure_topics
from tests.signing_keys import SIGNING


def isolated_settings(broker: str, redis_url: str, **kw: Any) -> RouterSettings:
    tag = uuid.uuid4().hex[:8]
    t = Topics()
    topics = Topics(**{name: f"{tag}.{value}" for name, value in t.model_dump().items()})
    return RouterSettings(
        kafka_bootstrap=broker,
        redis_url=redis_url,
        topics=topics,
        key_prefix=f"t{tag}:",
        consumer_group=f"router-{tag}",
        kafka_topic_partitions=2,
        # a group on this broker is formed ~half a session timeout after the first join
        # (the default 6 s: 3 s per test); 2 s still leaves four heartbeats per session
        **{**SIGNING, "kafka_session_timeout_ms": 2000, **kw},
    )


def output_topics(s: RouterSettings) -> list[str]:
    t = s.topics
    return [t.status, t.audit] + [t.dispatch(c) for c in CHANNELS]


@dataclass
class Harness:
    settings: RouterSettings
    redis: Redis
    producer: AIOKafkaProducer
    store: Store
    outbox: Outbox
    engine: RouterEngine
    scheduler: Scheduler
    desk: InquiryDesk

    async def publish(
        self, topic: str, value: bytes | dict[str, Any] | None, key: str = "c1"
    ) -> None:
        """Publish as the service that writes `topic` would: signed if it is internal."""
        raw = orjson.dumps(value) if isinstance(value, dict) else value
        headers = []
        if topic in internal_topics(self.settings.topics):
            headers.append(Signer.from_settings(self.settings).header(key.encode(), raw))
        await self.producer.send_and_wait(topic, raw, key=key.encode(), headers=headers)


@asynccontextmanager
async def engine_harness(
    broker: str,
    redis_url: str,
    *,
    run: bool = True,
    plans: Path | None = None,
    policy: str = "none",
    **kw: Any,
) -> AsyncIterator[Harness]:
    """The router's core as production builds it (services.router.core.build_core) on
    topics, keys and a group of its own; `policy`: a shipped preset (default: none)."""
    s = isolated_settings(broker, redis_url, plans_path=plans, policy_preset=policy, **kw)
    await ensure_topics(s)
    redis = make_redis(s)  # a Redis or, for a redis+cluster:// URL, a RedisCluster
    producer = make_producer(s, "test-router")
    await producer.start()
    core = await build_core(
        s, load_plans(plans), load_policy(s.policy_preset, s.policy_path), redis, producer
    )
    engine = core.engine
    h = Harness(s, redis, producer, core.store, core.outbox, engine, core.scheduler, core.desk)
    stopping = asyncio.Event()
    task = None
    consumer = None
    if run:
        consumer = make_consumer(s, s.consumer_group, [], "test-router")
        consumer.subscribe(engine.input_topics(), listener=RecoveringListener(engine))
        await consumer.start()
        task = asyncio.create_task(engine.run(consumer, stopping))
    try:
        yield h
    finally:
        stopping.set()
        if task is not None and consumer is not None:
            await task
            await consumer.stop()
        # what the test's own engine.process calls left in flight (the outbox's clean-up would
        # otherwise run on a closed client and open new connections: a RedisCluster's leak)
        await core.outbox.flush()
        await producer.stop()
        await redis.aclose()


class Reader:
    """Reads topics from the beginning; `take` awaits records matching a predicate."""

    def __init__(self, broker: str, *topics: str) -> None:
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=broker,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
            enable_auto_commit=False,
        )
        self.seen: list[ConsumerRecord[bytes, bytes]] = []

    async def __aenter__(self) -> Reader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def poll(self) -> None:
        batch = await self.consumer.getmany(timeout_ms=100)
        for msgs in batch.values():
            self.seen.extend(msgs)

    async def take(
        self, topic: str, count: int = 1, timeout_s: float = 20.0, where: Any = None
    ) -> list[ConsumerRecord[bytes, bytes]]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [m for m in self.seen if m.topic == topic and (where is None or where(m))]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)}/{count} records on {topic}")
            await self.poll()

    async def settle(self, quiet_s: float = 0.5) -> None:
        """Read until the topics have been quiet for `quiet_s` (to show nothing more came)."""
        last = len(self.seen)
        deadline = time.monotonic() + quiet_s
        while time.monotonic() < deadline:
            await self.poll()
            if len(self.seen) != last:
                last = len(self.seen)
                deadline = time.monotonic() + quiet_s


def push_request(nid: str, cid: str, token: str) -> bytes:
    """A `repayment_due` for one push token, as upstream publishes it (JSON bytes)."""
    return orjson.dumps(
        {
            "schema": "notification.requested/v1",
            "id": nid,
            "type": "repayment_due",
            "customer_id": cid,
            "occurred_at": datetime.now(UTC).isoformat(),
            "data": {"amount_due": "1280.00", "currency": "CNY", "due_date": "2026-12-01"},
            "contacts": {"push_tokens": [token]},
        }
    )


def value(m: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    v: dict[str, Any] = orjson.loads(m.value)
    return v


def header(m: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for k, v in m.headers or ():
        if k == name:
            return v.decode()
    return None


@asynccontextmanager
async def answering(
    h: Harness, outcome: Callable[[dict[str, Any]], str] = lambda d: "delivered"
) -> AsyncIterator[None]:
    """Stand-in channel services for an engine harness: every dispatch gets `outcome(d)`
    at once on the router inbox, as a channel service would report it."""
    t = h.settings.topics

    async def loop(r: Reader) -> None:
        done = 0
        while True:
            await r.poll()
            for m in r.seen[done:]:
                d = value(m)
                await h.publish(
                    t.router_inbox,
                    {
                        "schema": "tongda.outcome/v1",
                        "notification_id": d["notification_id"],
                        "customer_id": d["customer_id"],
                        "channel": d["channel"],
                        "leg": d["leg"],
                        "attempt": d["attempt"],
                        "outcome": outcome(d),
                        "provider": "test",
                        "at": d["dispatched_at"],
                    },
                    key=d["customer_id"],
                )
            done = len(r.seen)

    async with Reader(h.settings.kafka_bootstrap, *[t.dispatch(c) for c in CHANNELS]) as r:
        task = asyncio.create_task(loop(r))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
