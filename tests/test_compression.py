"""Records compressed by an upstream producer that is not aiokafka (librdkafka, as the Java
and most non-Python clients are configured) are read by every service, for every codec Kafka
has: one compressed record must never stop a batch loop (issue: poison pill 1)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from channel_support import collect, create_topics, dispatch, serving
from confluent_kafka import Producer

from services.push.providers import PushSandbox
from shared.channel.app import create_app
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome
from shared.signing import Signer
from tests.router_support import Reader, engine_harness, push_request, value

pytest_plugins = ["channel_support"]

CODECS = ["gzip", "snappy", "lz4", "zstd"]


def produce_with_librdkafka(
    bootstrap: str,
    topic: str,
    codec: str,
    records: list[tuple[bytes, bytes]],
    signer: Signer | None = None,
) -> None:
    """Produce with librdkafka (confluent-kafka), compressed with `codec`, and wait for acks;
    signed by `signer` if given (an internal topic)."""
    errors: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "linger.ms": 50,  # several records per compressed batch
            "enable.idempotence": False,
            "acks": "all",
        }
    )
    for key, val in records:
        headers = [signer.header(key, val)] if signer else None
        producer.produce(topic, value=val, key=key, headers=headers, on_delivery=on_delivery)
    left = producer.flush(20)
    assert left == 0, f"{left} records not acknowledged"
    assert not errors, errors


@pytest.mark.parametrize("codec", CODECS)
async def test_router_routes_records_compressed_by_librdkafka(
    broker: str, redis_server: str, codec: str
) -> None:
    async with engine_harness(broker, redis_server) as h:
        t = h.settings.topics
        ids = [f"{codec}-{uuid.uuid4().hex[:8]}-{i}" for i in range(5)]
        async with Reader(broker, t.dispatch("push"), t.deadletter) as r:
            await asyncio.to_thread(
                produce_with_librdkafka,
                broker,
                t.requested,
                codec,
                [(b"c-" + i.encode(), push_request(i, "c-" + i, "tok-" + i)) for i in ids],
            )
            dispatches = await r.take(t.dispatch("push"), len(ids))
            assert sorted(value(d)["notification_id"] for d in dispatches) == sorted(ids)
            await r.settle(0.3)
            assert not [m for m in r.seen if m.topic == t.deadletter]


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_is_installed(codec: str) -> None:
    """aiokafka reads each codec (its extras are dependencies of tongda)."""
    from aiokafka import codec as kcodec

    available = {
        "gzip": kcodec.has_gzip(),
        "snappy": kcodec.has_snappy(),
        "lz4": kcodec.has_lz4(),
        "zstd": kcodec.has_zstd(),
    }
    assert available[codec], f"aiokafka cannot decode {codec}"


@pytest.mark.parametrize("codec", CODECS)
async def test_channel_service_reads_dispatches_compressed_by_librdkafka(
    make_settings: Callable[..., ChannelSettings], codec: str
) -> None:
    settings = make_settings("push")
    await create_topics(settings)
    ds = [dispatch("push", f"tok-{codec}-{i}") for i in range(4)]
    async with serving(create_app(settings, PushSandbox()), settings.http_port):
        await asyncio.to_thread(
            produce_with_librdkafka,
            settings.kafka_bootstrap,
            settings.topics.dispatch("push"),
            codec,
            [(d.customer_id.encode(), dumps(d)) for d in ds],
            Signer.from_settings(settings),  # as the router signs dispatches
        )
        got = await collect(settings, settings.topics.router_inbox, len(ds))
    outcomes = {decode(r.value, AttemptOutcome).notification_id for r in got}
    assert outcomes == {d.notification_id for d in ds}
