"""Readiness that tells the truth (shared/health.py): a channel service whose consume loop
stops completing batches while records wait turns /readyz 503 within `stall_after_s`, exports
tongda_consume_loop_stalled, logs the repeated failure at a bounded rate, and recovers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer
from channel_support import create_topics, dispatch, produce, serving, wait_until
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.sms.providers import SmsSandbox
from shared.channel.app import create_app
from shared.config import ChannelSettings
from shared.contract.codec import dumps
from shared.health import LagMeter, RateLimitedLog, Watchdog
from shared.kafka import FetchWait
from shared.redis import RedisMeter
from tools.devstack import RedisServer

pytest_plugins = ["channel_support"]

MakeSettings = Callable[..., ChannelSettings]
STALL_AFTER_S = 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_says_the_same_error_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    logger = logging.getLogger("tongda.test.ratelimit")
    limited = RateLimitedLog(logger, every_s=5.0, clock=clock)
    with caplog.at_level(logging.ERROR, logger=logger.name):
        for _ in range(100):  # a hot failure: 100 in 1 s
            limited.log(logging.ERROR, "redis down", "batch failed: %s", "redis down")
            clock.now += 0.01
        assert len(caplog.records) == 1
        limited.log(logging.ERROR, "other", "batch failed: %s", "other")  # a new error: at once
        assert len(caplog.records) == 2
        clock.now += 5.0
        assert limited.log(logging.ERROR, "redis down", "batch failed: %s", "redis down")
    assert len(caplog.records) == 3
    repeat = caplog.records[2]
    assert "99 more suppressed" in repeat.getMessage()
    assert repeat.suppressed == 99  # type: ignore[attr-defined]


async def test_watchdog_backs_off_and_reports_a_stall_only_while_records_wait() -> None:
    clock = FakeClock()
    waiting: list[int | None] = [0]

    async def lag() -> int | None:
        return waiting[0]

    dog = Watchdog("tongda-test-dog", 30.0, lag, clock=clock)
    dog.batch_started(3)
    delays = [dog.failed(RuntimeError("boom")) for _ in range(7)]
    assert delays == [0.2, 0.5, 1.0, 2.0, 5.0, 5.0, 5.0]  # growing, bounded: never a hot loop
    assert await dog.stalled() is None  # within stall_after_s
    clock.now += 31
    reason = await dog.stalled()  # the failed batch of 3 waits to be fetched again
    assert reason is not None
    assert "3 records waiting" in reason and "RuntimeError: boom" in reason
    waiting[0] = 12
    reason = await dog.stalled()
    assert reason is not None and "15 records waiting" in reason
    assert (
        REGISTRY.get_sample_value("tongda_consume_loop_stalled", {"service": "tongda-test-dog"})
        == 1.0
    )
    dog.batch_done()
    assert await dog.stalled() is None  # just completed one
    clock.now += 31
    waiting[0] = 0
    assert await dog.stalled() is None  # idle with nothing waiting: not stalled
    dog.batch_started(5)
    dog.failed(RuntimeError("gateway refused +8613800138000"))
    clock.now += 31
    reason = await dog.stalled()
    assert reason is not None and "+86138****8000" in reason  # /readyz shows no phone numbers
    assert "13800138000" not in reason
    dog.failed(RuntimeError("rebalanced away"))
    dog.released()  # its partitions went to another consumer: nothing waits for us
    clock.now += 31
    assert await dog.stalled() is None
    assert (
        REGISTRY.get_sample_value("tongda_consume_loop_stalled", {"service": "tongda-test-dog"})
        == 0.0
    )


async def _readyz(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def test_empty_fetches_while_records_wait_are_a_stall_not_idleness() -> None:
    """A broker answering every fetch empty while the lag says records wait (seen on Tansu
    with a 50,000-record backlog) must not keep the loop 'progressing'."""
    clock = FakeClock()
    waiting: list[int | None] = [500]

    async def lag() -> int | None:
        return waiting[0]

    dog = Watchdog("tongda-test-starved", 30.0, lag, clock=clock)
    for _ in range(40):  # one empty fetch a second for 40 s, 500 records waiting throughout
        dog.nothing_fetched(waiting[0])
        clock.now += 1
    reason = await dog.stalled()
    assert reason is not None and "500 records waiting" in reason
    waiting[0] = 0
    dog.nothing_fetched(0)  # idle and nothing waits: progress
    assert await dog.stalled() is None


def test_fetch_wait_grows_while_the_broker_answers_empty_and_shrinks_when_records_flow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Fetcher:
        _fetch_max_wait_ms = 10

    class Consumer:
        _fetcher = Fetcher()

    consumer = Consumer()
    wait = FetchWait(consumer, base_ms=10, max_ms=500)  # type: ignore[arg-type]
    wait.after_fetch(0, 0)  # idle, nothing waiting: unchanged
    wait.after_fetch(0, None)  # lag unknown: unchanged
    wait.after_fetch(0, 5)  # one or two empty answers with records counted: normal on Tansu
    wait.after_fetch(0, 5)
    wait.after_fetch(7, 5)
    wait.after_fetch(0, 5)
    assert consumer._fetcher._fetch_max_wait_ms == 10 and wait.raised == 0
    with caplog.at_level(logging.WARNING, logger="shared.kafka"):
        for _ in range(10):
            wait.after_fetch(0, 1200)
    assert [consumer._fetcher._fetch_max_wait_ms, wait.raised] == [500, 6]  # 20 … 320, 500
    assert len(caplog.records) == 6 and "1200 wait" in caplog.records[0].getMessage()
    wait.after_fetch(300, 900)  # records again: back towards the configured wait
    assert consumer._fetcher._fetch_max_wait_ms == 250
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shared.kafka"):
        for _ in range(3):  # empty in a row again: up to a height already reported, not logged
            wait.after_fetch(0, 900)
    assert consumer._fetcher._fetch_max_wait_ms == 500 and not caplog.records
    for _ in range(8):
        wait.after_fetch(100, 0)
    assert consumer._fetcher._fetch_max_wait_ms == 10


async def test_channel_readiness_flips_when_the_loop_stalls_and_recovers(
    make_settings: MakeSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="shared.channel.worker")
    redis = RedisServer(tmp_path / "redis.log")  # our own: this test stops it
    redis.start()
    try:
        settings = make_settings(
            "sms", redis_url=redis.url, stall_after_s=STALL_AFTER_S, redis_socket_timeout_s=1.0
        )
        await create_topics(settings)
        app = create_app(settings, SmsSandbox())
        async with serving(app, settings.http_port) as url:

            async def ready() -> bool:
                return (await _readyz(url))[0] == 200

            await wait_until(ready, within_s=15)
            up = {"service": "tongda-sms"}
            assert REGISTRY.get_sample_value("tongda_redis_up", up) == 1.0  # pinged, beating
            claims = {"service": "tongda-sms", "operation": "claim"}
            claimed_before = (
                REGISTRY.get_sample_value("tongda_redis_command_seconds_count", claims) or 0.0
            )
            redis.kill()  # every claim now fails: the loop can complete no batch
            d = dispatch("sms", "+8613800130001")
            await produce(settings, settings.topics.dispatch("sms"), [(b"k", dumps(d))])
            produced = time.monotonic()

            async def stalled() -> bool:
                status, body = await _readyz(url)
                failures = body.get("failures")
                return (
                    status == 503
                    and isinstance(failures, dict)
                    and "records waiting" in str(failures.get("consumer"))
                )

            await wait_until(stalled, within_s=STALL_AFTER_S + 5)
            flipped_in = time.monotonic() - produced
            assert flipped_in <= STALL_AFTER_S + 5
            assert (
                REGISTRY.get_sample_value("tongda_consume_loop_stalled", {"service": "tongda-sms"})
                == 1.0
            )

            def failure_lines() -> list[logging.LogRecord]:
                return [r for r in caplog.records if "batch failed" in r.getMessage()]

            async def logged() -> bool:
                return bool(failure_lines())

            await wait_until(logged, within_s=15)  # redis-py gives up connecting after retries
            # a round trip (claim, heartbeat or ping) has met the connection error
            assert REGISTRY.get_sample_value("tongda_redis_up", up) == 0.0
            redis.start()  # same port; the AOF kept nothing we need
            await wait_until(ready, within_s=15)
            assert REGISTRY.get_sample_value("tongda_redis_up", up) == 1.0

            async def claimed() -> bool:  # the waiting dispatch's claim: one timed round trip
                n = REGISTRY.get_sample_value("tongda_redis_command_seconds_count", claims)
                return (n or 0.0) > claimed_before

            await wait_until(claimed, within_s=15)
            down_for = time.monotonic() - produced
            # one line at once, then at most one per 5 s (with a count): never a flood
            assert 1 <= len(failure_lines()) <= down_for / 5 + 1
            assert (
                REGISTRY.get_sample_value("tongda_consume_loop_stalled", {"service": "tongda-sms"})
                == 0.0
            )
    finally:
        redis.stop_sync()


async def test_lag_meter_reports_records_not_yet_fetched_per_topic(
    make_settings: MakeSettings,
) -> None:
    """tongda_consumer_lag_records{service, topic}: high-water mark minus position, summed
    over the topic's partitions (here 2), measured against the real broker."""
    settings = make_settings("sms")
    await create_topics(settings)
    topic = settings.topics.dispatch("sms")
    await produce(settings, topic, [(b"k%d" % i, b"{}") for i in range(7)])
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.consumer_group}-lag",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2,
    )
    await consumer.start()
    try:
        meter = LagMeter("tongda-lagtest", consumer)
        labels = {"service": "tongda-lagtest", "topic": topic}
        assert await meter.update() is None  # nothing fetched yet: no high-water mark known
        assert REGISTRY.get_sample_value("tongda_consumer_lag_records", labels) is None
        fetched, seen = 0, []
        while fetched < 7:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2)
            fetched += sum(len(rs) for rs in batch.values())
            lag = await meter.update()
            if lag is not None and len(consumer.assignment()) == 2:
                # every partition fetched from once: the lag is exactly what is left
                if all(consumer.highwater(tp) is not None for tp in consumer.assignment()):
                    assert lag == 7 - fetched
                    assert REGISTRY.get_sample_value("tongda_consumer_lag_records", labels) == lag
                    seen.append(lag)
        assert any(seen), seen  # records were seen waiting, not only the final 0
        assert await meter.update() == 0
        assert REGISTRY.get_sample_value("tongda_consumer_lag_records", labels) == 0.0
    finally:
        await consumer.stop()


async def test_redis_meter_times_round_trips_and_says_when_redis_is_gone(
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis.log")  # our own: this test stops it
    redis.start()
    meter = RedisMeter("tongda-redistest")
    client = Redis.from_url(redis.url, socket_timeout=1.0, socket_connect_timeout=1.0)
    count = {"service": "tongda-redistest", "operation": "read"}
    up = {"service": "tongda-redistest"}
    try:
        assert REGISTRY.get_sample_value("tongda_redis_up", up) is None  # nothing known yet
        assert await meter.timed("read", client.get("k")) is None
        assert REGISTRY.get_sample_value("tongda_redis_command_seconds_count", count) == 1.0
        assert REGISTRY.get_sample_value("tongda_redis_up", up) == 1.0
        with pytest.raises(ResponseError):  # an error reply is an answer: Redis is up
            await meter.timed("read", client.execute_command("NOSUCHCOMMAND"))
        assert REGISTRY.get_sample_value("tongda_redis_up", up) == 1.0
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        with pytest.raises(KeyError):  # operation names are a fixed set
            await meter.timed("get_customer_42", done)
        redis.kill()
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await meter.ping(client)
        assert REGISTRY.get_sample_value("tongda_redis_up", up) == 0.0
        # the error reply was a round trip too; the failed ping is not timed
        assert REGISTRY.get_sample_value("tongda_redis_command_seconds_count", count) == 2.0
        unused = {"service": "tongda-redistest", "operation": "apply"}  # never run here
        assert REGISTRY.get_sample_value("tongda_redis_command_seconds_count", unused) is None
    finally:
        await client.aclose()
        redis.stop_sync()
