"""`make bench`: the router's throughput and latency, measured beside the raw broker's.

One run, one fresh broker and Redis, three measurements side by side:
  1. raw: aiokafka consume → orjson parse → produce, with no state (the ceiling);
  2. router: the real router process (`python -m services.router`) draining the same number
     of notifications (requested → state in Redis → dispatch) with the `cn` contact rules
     active: each is an `overdue_notice` (collection) for a borrower of its own, so every one
     is judged against the calling window in the borrower's local time and against the
     frequency caps, reading the borrower's ledger and writing the call into it; the router's
     clock is set to 10:00 in Shanghai on a Tuesday so that the window is open;
  3. latency at a fixed rate: publish→dispatch through the router, beside the broker's own
     produce→consume latency at the same rate and consumer settings.
Rates come from the output records' timestamps (first to last), so start-up is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.config import CommonSettings, RouterSettings
from shared.gctune import tune_gc
from shared.kafka import make_consumer, make_producer
from shared.security import kafka_client_options
from tools.devstack import REPO_ROOT, Broker, RedisServer, Service

RAW_IN, RAW_OUT, LAT = "bench.raw.in", "bench.raw.out", "bench.latency"


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


BENCH_CLOCK = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # Tuesday 10:00 in Shanghai
DISPATCH_CHANNEL = "voice"  # the overdue_notice plan's first step


def customer(i: int, run: int = 0) -> str:
    return f"cust-{run}-{i}"


def notification(i: int, sent_at: float | None = None, run: int = 0) -> bytes:
    body: dict[str, Any] = {
        "schema": "notification.requested/v1",
        "id": f"bench-{run}-{i}-{sent_at or 0}",
        "type": "overdue_notice",
        "customer_id": customer(i, run),
        "occurred_at": BENCH_CLOCK.isoformat(),
        "data": {
            "loan_id": f"L{i}",
            "amount_due": "1280.00",
            "currency": "CNY",
            "due_date": "2026-12-01",
            "sent_at": sent_at,
        },
        "contacts": {"phone": f"+861380{i % 100000:05d}9999"},
    }
    return orjson.dumps(body)


async def publish(s: CommonSettings, topic: str, n: int, make: Callable[[int], bytes]) -> None:
    producer = make_producer(s, "bench-publisher")
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, make(i), key=f"cust-{i}".encode())
            if i and i % 5000 == 0:
                say(f"published {i}/{n} to {topic}")
        await producer.flush()
    finally:
        await producer.stop()


async def span_of(s: CommonSettings, topic: str, n: int, timeout_s: float, skip: int = 0) -> float:
    """Seconds between the first and the n-th record's timestamp on `topic`, after `skip`
    records (those of earlier rounds)."""
    c = AIOKafkaConsumer(
        topic,
        **kafka_client_options(s),
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )
    await c.start()
    stamps: list[int] = []
    deadline = time.monotonic() + timeout_s
    next_note = time.monotonic() + 5
    try:
        while len(stamps) < skip + n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(stamps) - skip}/{n} records on {topic}")
            for msgs in (await c.getmany(timeout_ms=500, max_records=5000)).values():
                stamps += [m.timestamp for m in msgs]
            if time.monotonic() > next_note:
                say(f"{topic}: {len(stamps)}/{n}")
                next_note = time.monotonic() + 5
    finally:
        await c.stop()
    stamps = sorted(stamps[skip:])
    return max(1, stamps[n - 1] - stamps[0]) / 1000


async def raw_passthrough(s: CommonSettings, n: int, run: int) -> float:
    """One round on topics and a group of its own: the backlog is in place before the
    consumer joins, as it is for the router."""
    src, dst = f"{RAW_IN}.{run}", f"{RAW_OUT}.{run}"
    await publish(s, src, n, lambda i: notification(i, run=run))
    consumer = make_consumer(s, f"bench-raw-{run}", [src], "bench-raw")
    producer = make_producer(s, "bench-raw")
    await consumer.start()
    await producer.start()
    done = 0
    try:
        while done < n:
            batch = await consumer.getmany(timeout_ms=500)
            futures = []
            for msgs in batch.values():
                for m in msgs:
                    out = orjson.dumps(orjson.loads(m.value))
                    futures.append(await producer.send(dst, out, key=m.key))
            await asyncio.gather(*futures)
            if batch:
                await consumer.commit()
            done += len(futures)
    finally:
        await consumer.stop()
        await producer.stop()
    return n / await span_of(s, dst, n, 60)


async def router_rate(s: CommonSettings, router: Service, n: int, run: int) -> float:
    """The router is paused (SIGSTOP) while the round's backlog is published, so the rate is
    the router's own and not the publisher's."""
    router.send(signal.SIGSTOP)
    try:
        await publish(s, s.topics.requested, n, lambda i: notification(i, run=run))
    finally:
        router.send(signal.SIGCONT)
    say("router draining the backlog …")
    return n / await span_of(s, s.topics.dispatch(DISPATCH_CHANNEL), n, 600, skip=run * n)


def median_range(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    return xs[len(xs) // 2], xs[0], xs[-1]


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def paced(
    s: CommonSettings, topic: str, rate: int, seconds: float, make: Callable[[int, float], bytes]
) -> None:
    producer = make_producer(s, "bench-paced")
    await producer.start()
    try:
        start = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(topic, make(i, time.time()), key=f"cust-{i}".encode())
    finally:
        await producer.stop()


async def collect_latency(
    s: CommonSettings, topic: str, count: int, sent_at: Callable[[bytes], float | None]
) -> list[float]:
    c = AIOKafkaConsumer(
        topic,
        **kafka_client_options(s),
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
    )
    await c.start()
    await c.seek_to_end()
    out: list[float] = []
    deadline = time.monotonic() + 120
    try:
        while len(out) < count and time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=200)).values():
                now = time.time()
                for m in msgs:
                    t = sent_at(m.value)
                    if t:
                        out.append(now - t)
    finally:
        await c.stop()
    return out


async def latency_pair(s: CommonSettings, rate: int, seconds: float) -> dict[str, list[float]]:
    count = int(rate * seconds)
    say(f"latency at {rate}/s for {seconds:.0f} s: through the router …")
    collector = asyncio.create_task(
        collect_latency(
            s,
            s.topics.dispatch(DISPATCH_CHANNEL),
            count,
            lambda v: orjson.loads(v)["data"].get("sent_at"),
        )
    )
    await asyncio.sleep(1.0)
    await paced(s, s.topics.requested, rate, seconds, lambda i, t: notification(10_000_000 + i, t))
    router = await collector
    say("… and the broker alone")
    collector = asyncio.create_task(collect_latency(s, LAT, count, lambda v: orjson.loads(v)["t"]))
    await asyncio.sleep(1.0)
    await paced(s, LAT, rate, seconds, lambda i, t: orjson.dumps({"i": i, "t": t}))
    broker = await collector
    return {"router": router, "broker": broker}


def table(
    n: int, raws: list[float], routeds: list[float], lat: dict[str, list[float]], rate: int
) -> str:
    ms = {k: (percentile(v, 0.5) * 1000, percentile(v, 0.99) * 1000) for k, v in lat.items()}
    raw, raw_lo, raw_hi = median_range(raws)
    routed, r_lo, r_hi = median_range(routeds)
    ratios = sorted(r / w for r, w in zip(routeds, raws, strict=True))
    return "\n".join(
        [
            f"| measure (N={n}, median of {len(raws)} runs [min–max], {os.cpu_count()} cores, "
            f"Python {platform.python_version()}) | value |",
            "|---|---|",
            f"| raw aiokafka consume→JSON→produce | {raw:,.0f} events/s "
            f"[{raw_lo:,.0f}–{raw_hi:,.0f}] |",
            f"| router, full state handling (requested → Redis → dispatch) "
            f"| {routed:,.0f} events/s [{r_lo:,.0f}–{r_hi:,.0f}] |",
            f"| ratio router / raw (run by run) | {ratios[len(ratios) // 2]:.2f} "
            f"[{ratios[0]:.2f}–{ratios[-1]:.2f}] |",
            f"| publish→dispatch latency at {rate}/s through the router, p50 / p99 | "
            f"{ms['router'][0]:.0f} / {ms['router'][1]:.0f} ms |",
            f"| broker produce→consume latency at {rate}/s, p50 / p99 | "
            f"{ms['broker'][0]:.0f} / {ms['broker'][1]:.0f} ms |",
        ]
    )


async def main_async(args: argparse.Namespace) -> str:
    run = REPO_ROOT / ".run" / "bench"
    broker, redis = Broker(run / "broker.log"), RedisServer(run / "redis.log")
    broker.start()
    redis.start()
    router: Service | None = None
    try:
        s = CommonSettings(kafka_bootstrap=broker.bootstrap, redis_url=redis.url)
        await broker.create_topics(s)
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
        await admin.start()
        names = [f"{t}.{k}" for k in range(args.runs) for t in (RAW_IN, RAW_OUT)] + [LAT]
        await admin.create_topics([NewTopic(t, s.kafka_topic_partitions, 1) for t in names])
        await admin.close()
        say("starting the router …")
        router = Service(
            "router",
            run / "router.log",
            env={
                "TONGDA_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
                "TONGDA_REDIS_URL": s.redis_url,
                "TONGDA_LOG_LEVEL": "WARNING",
                "TONGDA_API_TOKEN": "bench",
                "TONGDA_SIGNING_KEYS": json.dumps({"bench": secrets.token_urlsafe(32)}),
                "TONGDA_POLICY_PRESET": "cn",  # every event judged by the contact rules
                "TONGDA_CLOCK_START": BENCH_CLOCK.isoformat(),
                "TONGDA_CLOCK_ORIGIN_EPOCH_S": repr(time.time()),
            },
        )
        await router.start(ready_timeout=90)
        raws: list[float] = []
        routeds: list[float] = []
        for k in range(args.runs):  # side by side, alternating, on the same broker
            say(f"run {k + 1}/{args.runs}: raw pass-through of {args.n} events …")
            raws.append(await raw_passthrough(s, args.n, k))
            routeds.append(await router_rate(s, router, args.n, k))
            say(f"run {k + 1}: raw {raws[-1]:,.0f}/s, router {routeds[-1]:,.0f}/s")
        lat = await latency_pair(s, args.rate, args.seconds)
        return table(args.n, raws, routeds, lat, args.rate)
    finally:
        if router is not None:
            await router.stop()
        await broker.stop()
        await redis.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=int(os.environ.get("BENCH_N", "20000")))
    p.add_argument("--runs", type=int, default=3, help="throughput runs (median reported)")
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--markdown", type=Path, help="also write the table into this file")
    args = p.parse_args()
    # The raw loop runs with the router's GC settings, so the comparison is like for like.
    tune_gc(RouterSettings().gc_gen0_threshold)
    result = asyncio.run(main_async(args))
    print(result)
    if args.markdown:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        args.markdown.write_text(
            f"<!-- written by `python -m tools.bench` on {stamp} -->\n{result}\n"
        )


if __name__ == "__main__":
    main()
