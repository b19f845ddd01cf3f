"""`make bench`: the router's throughput and latency, measured beside the raw broker's.

One run, one fresh broker and Redis, these measurements side by side:
  1. raw: aiokafka consume → orjson parse → produce, with no state (the ceiling);
  2. router: the real router process (`python -m services.router`) draining the same number
     of notifications (requested → state in Redis → dispatch) with the `cn` contact rules
     active: each is an `overdue_notice` (collection) for a borrower of its own, so every one
     is judged against the calling window in the borrower's local time and against the
     frequency caps, reading the borrower's ledger and writing the call into it; the router's
     clock is set to 10:00 in Shanghai on a Tuesday so that the window is open, and runs 20×
     slower than real time so that no step times out (and adds work) during the bench;
  3. latency at a fixed rate (2,000/s): publish→dispatch through the router, beside the same
     two broker hops through the raw pass-through loop (no state) and the broker's own
     produce→consume latency, at the same rate and consumer settings;
  4. scaling: a second router process joins the group, and the two drain the same backlog;
  5. memory: the resident set (RSS) of the router(s), Redis and the broker, sampled while the
     router drains, peak per process;
  6. the rules' own cost: in each run a second router with the contact rules off (preset
     `none`), on topics, keys and groups of its own, drains the same backlog after the first
     (each stopped while the other works), against the same raw round (`--bare-runs`).
Rates are timed from the moment the loop under test gets its backlog (the raw loop's first
records; the routers let go with SIGCONT, already in their group) to the timestamp of the
n-th output record, so start-up and group joins are not counted and every record is.
The broker and Redis run at a higher priority (`--backends-nice`, default -10) than the loops
under test: in production each has machines of its own (see `backend_priority`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from shared.config import CommonSettings, RouterSettings, Topics
from shared.gctune import tune_gc
from shared.kafka import make_consumer, make_producer
from shared.security import kafka_client_options
from tools.demo import end_offsets, wait_committed
from tools.devstack import REPO_ROOT, Broker, RedisServer, Service

RAW_IN, RAW_OUT, LAT = "bench.raw.in", "bench.raw.out", "bench.latency"
LAT_IN, LAT_OUT = "bench.latency.raw.in", "bench.latency.raw.out"
LATENCY_RUN = 9999  # the run tag (customer ids) of the latency phase's notifications
BARE = "bare."  # what the router without rules' topics, keys and groups are named with


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


BENCH_CLOCK = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)  # Tuesday 10:00 in Shanghai
DISPATCH_CHANNEL = "voice"  # the overdue_notice plan's first step


def customer(i: int, run: int = 0) -> str:
    return f"cust-{run}-{i}"


@contextlib.asynccontextmanager
async def backends(run_dir: Path) -> AsyncIterator[tuple[Broker, RedisServer]]:
    """A fresh broker and Redis for one bench (logs under `run_dir`), stopped afterwards."""
    broker, redis = Broker(run_dir / "broker.log"), RedisServer(run_dir / "redis.log")
    broker.start()
    redis.start()
    try:
        yield broker, redis
    finally:
        await redis.stop()
        redis.wipe()  # its AOF: hundreds of MB a bench
        await broker.stop()


def engine_settings(broker: Broker, redis: RedisServer, **overrides: Any) -> RouterSettings:
    """The router's settings in the in-process benches (bench_engine, bench_lua, bench_fsync):
    `backends()`' broker and Redis, the cn rules, a fresh signing key; `overrides` on top."""
    return RouterSettings(
        **{
            "kafka_bootstrap": broker.bootstrap,
            "redis_url": redis.url,
            "api_token": "bench",
            "policy_preset": "cn",
            "signing_keys": {"bench": secrets.token_urlsafe(32)},
            **overrides,
        }
    )


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


class Stamps:
    """A reader of one topic's record timestamps. It keeps its position between rounds, so a
    round reads only what was written since the last round, not the topic from its
    beginning again."""

    def __init__(self, s: CommonSettings, topic: str) -> None:
        self.topic = topic
        self.consumer = AIOKafkaConsumer(
            topic,
            **kafka_client_options(s),
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )

    async def __aenter__(self) -> Stamps:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()

    async def nth(self, n: int, timeout_s: float, run: int | None = None) -> int:
        """The timestamp (epoch ms, set by the producer when it took the record) of the n-th
        record read from here on, in time order; with `run`, only the records of that round
        count (their key is a customer id `cust-<run>-…`)."""
        prefix = None if run is None else customer(0, run).rsplit("-", 1)[0].encode() + b"-"
        stamps: list[int] = []
        deadline = time.monotonic() + timeout_s
        next_note = time.monotonic() + 5
        while len(stamps) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(stamps)}/{n} records on {self.topic}")
            for msgs in (await self.consumer.getmany(timeout_ms=500, max_records=5000)).values():
                stamps += [
                    m.timestamp
                    for m in msgs
                    if prefix is None or (m.key is not None and m.key.startswith(prefix))
                ]
            if time.monotonic() > next_note:
                say(f"{self.topic}: {len(stamps)}/{n}")
                next_note = time.monotonic() + 5
        return sorted(stamps)[n - 1]


async def nth_of(
    s: CommonSettings, topic: str, n: int, timeout_s: float, run: int | None = None
) -> int:
    """`Stamps.nth` of a topic read from its beginning."""
    async with Stamps(s, topic) as reader:
        return await reader.nth(n, timeout_s, run)


def rate_since(n: int, start_s: float, last_ms: int) -> float:
    """Events per second: `n` events from `start_s` (epoch s, when the loop under test got
    its first records or was let go) until the last one's output record was taken (epoch
    ms; same host clock). Timed from the outputs' own first timestamp instead, a loop that
    hands its records to the producer a whole batch at a time (the router: after the batch
    is applied) would have its first batch left out of the time but not of `n`."""
    return n / max(1e-3, last_ms / 1000 - start_s)


async def raw_loop(
    s: CommonSettings,
    src: str,
    dst: str,
    group: str,
    done: Callable[[int], bool],
    on_first: Callable[[], None] = lambda: None,
) -> None:
    """The raw pass-through: consume (the router's consumer settings) → orjson parse →
    serialise → produce without awaiting each send → commit; until `done(records so far)`.
    `on_first` is called when the first records arrive (start-up and group join are over)."""
    consumer = make_consumer(s, group, [src], "bench-raw")
    producer = make_producer(s, "bench-raw")
    await consumer.start()
    await producer.start()
    count = 0
    try:
        while not done(count):
            batch = await consumer.getmany(timeout_ms=100)
            if batch and not count:
                on_first()
            futures = []
            for msgs in batch.values():
                for m in msgs:
                    out = orjson.dumps(orjson.loads(m.value))
                    futures.append(await producer.send(dst, out, key=m.key))
            await asyncio.gather(*futures)
            if batch:
                await consumer.commit()
            count += len(futures)
    finally:
        await consumer.stop()
        await producer.stop()


async def raw_passthrough(
    s: CommonSettings,
    n: int,
    run: int,
    broker_pid: int | None = None,
    cpu: dict[str, list[float]] | None = None,
) -> float:
    """One round on topics and a group of its own: the backlog is in place before the
    consumer joins, as it is for the router. With `cpu`, the CPU µs per event the loop (this
    process, which does nothing else meanwhile) and the broker spent from the first records
    to the last acknowledgement are appended to `cpu["raw loop"]` and `cpu["broker"]`."""
    src, dst = f"{RAW_IN}.{run}", f"{RAW_OUT}.{run}"
    await publish(s, src, n, lambda i: notification(i, run=run))
    before: list[float] = []

    def first() -> None:
        before.extend((time.process_time(), cpu_s(broker_pid), time.time()))

    await raw_loop(s, src, dst, f"bench-raw-{run}", lambda count: count >= n, first)
    if cpu is not None and before:
        cpu.setdefault("raw loop", []).append((time.process_time() - before[0]) / n * 1e6)
        cpu.setdefault("broker", []).append((cpu_s(broker_pid) - before[1]) / n * 1e6)
    return rate_since(n, before[2], await nth_of(s, dst, n, 60))


def backend_priority(pid: int | None, nice: int) -> None:
    """Run the broker or Redis at `nice` (lower: a larger share of the cores when everything
    is busy). In production both run on machines of their own; here they share two cores
    with the routers, and the kernel's fair share would give Redis, the one single-threaded
    stage every router waits on, no more of a core than each router process."""
    if pid is not None and nice:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        except OSError as exc:  # not permitted (not root): measured at equal priority
            say(f"cannot renice pid {pid} to {nice} ({exc}); the backends run at equal priority")


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def router_rate(
    s: CommonSettings,
    group: str,
    routers: list[Service],
    n: int,
    run: int,
    redis_pid: int | None = None,
    cpu: dict[str, list[float]] | None = None,
    broker_pid: int | None = None,
    reader: Stamps | None = None,
) -> float:
    """The routers are paused (SIGSTOP) while the round's backlog is published, so the rate is
    the routers' own and not the publisher's. The bench waits for the routers' consumer
    `group` to commit the whole backlog (asking the broker every 50 ms) and reads the
    dispatches only then, as it reads the raw loop's output after the loop: nothing of the
    bench's own competes with the routers for the cores meanwhile. With `cpu`, the CPU µs per
    event the routers, Redis and the broker spent on the round are appended to
    `cpu["router"]`, `cpu["Redis"]` and `cpu["broker"]`."""
    for router in routers:
        router.send(signal.SIGSTOP)
    try:
        await publish(s, s.topics.requested, n, lambda i: notification(i, run=run))
        ends = await end_offsets(s.kafka_bootstrap, s.topics.requested)
    finally:
        pids = [r.pid for r in routers]
        before = sum(cpu_s(p) for p in pids), cpu_s(redis_pid), cpu_s(broker_pid)
        start_s = time.time()
        for router in routers:
            router.send(signal.SIGCONT)
    say(f"{len(routers)} router process(es) draining the backlog …")
    await wait_committed(s.kafka_bootstrap, group, ends, 600, poll_s=0.05)
    if cpu is not None:
        after = sum(cpu_s(p) for p in pids), cpu_s(redis_pid), cpu_s(broker_pid)
        for name, b, a in zip(("router", "Redis", "broker"), before, after, strict=True):
            cpu.setdefault(name, []).append((a - b) / n * 1e6)
    out = s.topics.dispatch(DISPATCH_CHANNEL)
    if reader is None:
        return rate_since(n, start_s, await nth_of(s, out, n, 60, run=run))
    assert reader.topic == out, f"a reader of {reader.topic}, not of {out}"
    return rate_since(n, start_s, await reader.nth(n, 60, run=run))


class RssSampler:
    """Peak resident set size (MiB) of named processes, sampled every 0.2 s while running."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.peak: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None

    def watch(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self.pids[name] = pid

    @staticmethod
    def rss_mib(pid: int) -> float | None:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    async def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                mib = self.rss_mib(pid)
                if mib is not None:
                    self.peak[name] = max(self.peak.get(name, 0.0), mib)
            await asyncio.sleep(0.2)

    def __enter__(self) -> RssSampler:
        self.task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()


async def wait_for_members(s: CommonSettings, group: str, members: int, timeout_s: float) -> None:
    """Until the consumer group has `members` members with partitions assigned (a second
    router joined and the group rebalanced)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            described = await admin.describe_consumer_groups([group])
            groups = described[0].groups if described else []
            state = groups[0][2] if groups else ""
            joined = len(groups[0][5]) if groups else 0
            if state == "Stable" and joined >= members:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group}: {joined} members, state {state!r}")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


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


async def latency_of(
    s: CommonSettings, topic: str, out_topic: str, rate: int, seconds: float, run: int
) -> list[float]:
    """Publish notifications at `rate` to `topic` for `seconds`; publish→arrival on
    `out_topic` of each (its `data.sent_at`)."""
    collector = asyncio.create_task(
        collect_latency(
            s, out_topic, int(rate * seconds), lambda v: orjson.loads(v)["data"].get("sent_at")
        )
    )
    await asyncio.sleep(1.0)
    await paced(s, topic, rate, seconds, lambda i, t: notification(i, t, run=run))
    return await collector


async def latencies(s: CommonSettings, rate: int, seconds: float) -> dict[str, list[float]]:
    say(f"latency at {rate}/s for {seconds:.0f} s: through the router …")
    router = await latency_of(
        s, s.topics.requested, s.topics.dispatch(DISPATCH_CHANNEL), rate, seconds, LATENCY_RUN
    )
    say("… through the raw pass-through (the same two broker hops, no state) …")
    stop = asyncio.Event()
    loop = asyncio.create_task(
        raw_loop(s, LAT_IN, LAT_OUT, "bench-lat-raw", lambda _: stop.is_set())
    )
    try:
        await publish(s, LAT_IN, 1, lambda i: notification(i, run=LATENCY_RUN + 1))
        await nth_of(s, LAT_OUT, 1, 60)  # the loop has joined its group and passes records
        raw = await latency_of(s, LAT_IN, LAT_OUT, rate, seconds, LATENCY_RUN + 2)
    finally:
        stop.set()
        await loop
    say("… and the broker alone (one hop)")
    collector = asyncio.create_task(
        collect_latency(s, LAT, int(rate * seconds), lambda v: orjson.loads(v)["t"])
    )
    await asyncio.sleep(1.0)
    await paced(s, LAT, rate, seconds, lambda i, t: orjson.dumps({"i": i, "t": t}))
    broker = await collector
    return {"router": router, "raw": raw, "broker": broker}


def cpu_used(cpu: dict[str, list[float]], rate: float = 0.0) -> str:
    """Each process's median CPU µs per event, their sum, and the rate that sum allows on
    this machine's cores if nothing else ran: the ceiling the processes share. With `rate`
    (events/s measured), how many cores the processes kept busy at it."""
    medians = {name: median_range(us)[0] for name, us in cpu.items()}
    used = ", ".join(f"{name} {v:.0f}" for name, v in medians.items())
    total = sum(medians.values())
    cores = os.cpu_count() or 1
    if not total:
        return used
    busy = f"; at {rate:,.0f}/s they kept {total * rate / 1e6:.1f} cores busy" if rate else ""
    return (
        f"{used}; sum {total:.0f}: {cores} cores allow at most {cores * 1e6 / total:,.0f}/s{busy}"
    )


def table(
    n: int,
    raws: list[float],
    routeds: list[float],
    twos: list[float],
    lat: dict[str, list[float]],
    rate: int,
    rss: dict[str, float],
    cpu: dict[str, list[float]],
    bare: tuple[list[float], list[float], dict[str, list[float]]] | None = None,
    raw_cpu: dict[str, list[float]] | None = None,
    two_cpu: dict[str, list[float]] | None = None,
    backends_nice: int = 0,
) -> str:
    ms = {k: (percentile(v, 0.5) * 1000, percentile(v, 0.99) * 1000) for k, v in lat.items()}
    rows = [
        f"| measure (N={n}, median of {len(raws)} runs [min–max], {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
        + (f"; broker and Redis at nice {backends_nice}" if backends_nice else "")
        + ") | value |",
        "|---|---|",
    ]
    raw = routed = 0.0
    if raws:
        raw, raw_lo, raw_hi = median_range(raws)
        routed, r_lo, r_hi = median_range(routeds)
        ratios = sorted(r / w for r, w in zip(routeds, raws, strict=True))
        rows += [
            f"| raw aiokafka consume→JSON→produce | {raw:,.0f} events/s "
            f"[{raw_lo:,.0f}–{raw_hi:,.0f}] |",
            "| router, full state handling and the cn rules (requested → ledger, Redis → "
            f"dispatch) | {routed:,.0f} events/s [{r_lo:,.0f}–{r_hi:,.0f}] |",
            "| ratio router / raw (run by run; targets: ≥ 0.35 with the cn rules, 0.5 in the "
            f"end) | {ratios[len(ratios) // 2]:.2f} "
            f"[{ratios[0]:.2f}–{ratios[-1]:.2f}] |",
        ]
    if raw_cpu:
        rows.append(f"| CPU per raw event (µs, median of the runs) | {cpu_used(raw_cpu, raw)} |")
    if cpu:
        rows.append(f"| CPU per routed event (µs, median of the runs) | {cpu_used(cpu, routed)} |")
    if bare and bare[0]:
        # the same rounds with the contact rules switched off (preset none): what the rules
        # themselves cost, beside what the rest of the router's work costs
        b_raws, b_routeds, b_cpu = bare
        b_routed, b_lo, b_hi = median_range(b_routeds)
        b_ratios = sorted(r / w for r, w in zip(b_routeds, b_raws, strict=True))
        rows += [
            "| router, the same events with the contact rules off (preset `none`: no window, "
            f"no ledger; runs: {len(b_routeds)}, each after the router with the rules, beside "
            f"the same raw round) | {b_routed:,.0f} "
            f"events/s [{b_lo:,.0f}–{b_hi:,.0f}] |",
            f"| ratio router without rules / raw | {b_ratios[len(b_ratios) // 2]:.2f} "
            f"[{b_ratios[0]:.2f}–{b_ratios[-1]:.2f}] |",
            f"| router with the cn rules / without (median rates) | {routed / b_routed:.2f} |"
            if routed
            else "",
        ]
        if b_cpu:
            rows.append(
                f"| CPU per routed event without rules (µs, median) | {cpu_used(b_cpu, b_routed)} |"
            )
    if twos:
        two, t_lo, t_hi = median_range(twos)
        rows += [
            f"| two router processes, same group ({len(twos)} runs) | {two:,.0f} events/s "
            f"[{t_lo:,.0f}–{t_hi:,.0f}] |",
            f"| two routers / one (target ≥ 1.4) | {two / routed:.2f} |" if routed else "",
        ]
        if two_cpu:
            rows.append(
                f"| CPU per routed event with two routers (µs, median) | {cpu_used(two_cpu, two)} |"
            )
    rows += [
        f"| publish→dispatch latency at {rate}/s through the router, p50 / p99 | "
        f"{ms['router'][0]:.0f} / {ms['router'][1]:.0f} ms |",
        f"| the same two hops through the raw pass-through at {rate}/s, p50 / p99 | "
        f"{ms['raw'][0]:.0f} / {ms['raw'][1]:.0f} ms |",
        f"| router p99 − raw p99 (target ≤ 25 ms) | {ms['router'][1] - ms['raw'][1]:.0f} ms |",
        f"| broker produce→consume latency at {rate}/s (one hop), p50 / p99 | "
        f"{ms['broker'][0]:.0f} / {ms['broker'][1]:.0f} ms |",
    ]
    if rss:
        peaks = ", ".join(f"{name} {mib:,.0f}" for name, mib in rss.items())
        rows.append(f"| peak resident memory (RSS, MiB) under load | {peaks} |")
    return "\n".join(row for row in rows if row)


def router_service(
    s: CommonSettings,
    name: str,
    log: Path,
    origin_s: float,
    signing_keys: str,
    preset: str = "cn",
    own: str = "",
) -> Service:
    """A router process; with `own`, on topics, keys and groups of its own (named with `own`
    in front: see `own_settings`), so that it can sit beside the first router unseen."""
    env = {}
    if own:
        mine = own_settings(s, own)
        env = {f"TONGDA_TOPICS__{k.upper()}": v for k, v in mine.topics.model_dump().items()}
        env |= {
            "TONGDA_KEY_PREFIX": mine.key_prefix,
            "TONGDA_CONSUMER_GROUP": mine.consumer_group,
            "TONGDA_FAUST_APP_ID": mine.faust_app_id,
        }
    return Service(
        "router",
        log,
        env=env
        | {
            "TONGDA_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "TONGDA_REDIS_URL": s.redis_url,
            "TONGDA_LOG_LEVEL": "WARNING",
            "TONGDA_API_TOKEN": "bench",
            "TONGDA_SIGNING_KEYS": signing_keys,  # internal topics are signed
            "TONGDA_POLICY_PRESET": preset,  # cn: every event judged by the contact rules
            "TONGDA_CLOCK_START": BENCH_CLOCK.isoformat(),
            "TONGDA_CLOCK_ORIGIN_EPOCH_S": repr(origin_s),
            # simulated time 20× slower than real: no step timeout (90 s) comes due during the
            # bench, so later rounds do not also carry the timeouts of earlier ones
            "TONGDA_TIME_SCALE": "20",
            "TONGDA_KAFKA_CLIENT_ID": name,
        },
    )


def own_settings(s: CommonSettings, own: str) -> RouterSettings:
    """A router's settings on `s`' broker and Redis with every topic, its key prefix and its
    groups named with `own` in front."""
    d = RouterSettings(api_token="bench")
    return RouterSettings(
        kafka_bootstrap=s.kafka_bootstrap,
        redis_url=s.redis_url,
        api_token="bench",
        topics=Topics(**{k: f"{own}{v}" for k, v in d.topics.model_dump().items()}),
        key_prefix=f"{own}{d.key_prefix}",
        consumer_group=f"{own}{d.consumer_group}",
        faust_app_id=f"{own}{d.faust_app_id}",
    )


async def main_async(args: argparse.Namespace) -> str:
    run = REPO_ROOT / ".run" / "bench"
    broker, redis = Broker(run / "broker.log"), RedisServer(run / "redis.log")
    broker.start()
    redis.start()
    routers: list[Service] = []
    readers = contextlib.AsyncExitStack()  # the dispatch topics' readers, kept across rounds
    try:
        for pid in (broker.pid, redis.pid):
            backend_priority(pid, args.backends_nice)
        s = CommonSettings(kafka_bootstrap=broker.bootstrap, redis_url=redis.url)
        await broker.create_topics(s)
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
        await admin.start()
        raw_runs = range(args.runs)
        names = [f"{t}.{k}" for k in raw_runs for t in (RAW_IN, RAW_OUT)]
        names += [LAT, LAT_IN, LAT_OUT]
        await admin.create_topics([NewTopic(t, s.kafka_topic_partitions, 1) for t in names])
        await admin.close()
        say("starting the router …")
        origin_s = time.time()
        keys = json.dumps({"bench": secrets.token_urlsafe(32)})  # one signing key per run
        routers.append(router_service(s, "tongda-bench-1", run / "router.log", origin_s, keys))
        await routers[0].start(ready_timeout=90)
        rss = RssSampler()
        rss.watch("router", routers[0].pid)
        rss.watch("Redis", redis.pid)
        rss.watch("broker", broker.pid)
        # The router without the contact rules (preset none) sits beside it on topics, keys
        # and groups of its own, stopped (SIGSTOP) but for its own rounds.
        bare_s = own_settings(s, BARE)
        bare_router: Service | None = None
        if args.bare_runs:
            await broker.create_topics(bare_s)
            bare_router = router_service(
                s, "tongda-bench-none", run / "router-none.log", origin_s, keys, "none", BARE
            )
            routers.append(bare_router)
            await bare_router.start(ready_timeout=90)
            bare_router.send(signal.SIGSTOP)
            rss.watch("router (no rules)", bare_router.pid)
        out = s.topics.dispatch(DISPATCH_CHANNEL)
        group = RouterSettings(api_token="bench").consumer_group
        reader = await readers.enter_async_context(Stamps(s, out))
        bare_reader = (
            await readers.enter_async_context(Stamps(s, bare_s.topics.dispatch(DISPATCH_CHANNEL)))
            if bare_router is not None
            else None
        )
        raws: list[float] = []
        routeds: list[float] = []
        cpu: dict[str, list[float]] = {}
        raw_cpu: dict[str, list[float]] = {}
        bare: tuple[list[float], list[float], dict[str, list[float]]] = ([], [], {})
        for k in range(args.runs):  # side by side, alternating, on the same broker
            say(f"run {k + 1}/{args.runs}: raw pass-through of {args.n} events …")
            raws.append(await raw_passthrough(s, args.n, k, broker.pid, raw_cpu))
            with rss:
                routeds.append(
                    await router_rate(
                        s, group, routers[:1], args.n, k, redis.pid, cpu, broker.pid, reader
                    )
                )
            say(f"run {k + 1}: raw {raws[-1]:,.0f}/s, router {routeds[-1]:,.0f}/s")
            if bare_router is not None and k < args.bare_runs:
                routers[0].send(signal.SIGSTOP)  # the router with the rules sits still meanwhile
                try:
                    with rss:
                        rate = await router_rate(
                            bare_s,
                            bare_s.consumer_group,
                            [bare_router],
                            args.n,
                            k,
                            redis.pid,
                            bare[2],
                            broker.pid,
                            bare_reader,
                        )
                finally:
                    bare_router.send(signal.SIGSTOP)
                    routers[0].send(signal.SIGCONT)
                bare[0].append(raws[-1])
                bare[1].append(rate)
                say(f"run {k + 1}: the router without rules {rate:,.0f}/s")
        if bare_router is not None:  # done with it
            bare_router.send(signal.SIGCONT)
            await bare_router.stop()
            routers.remove(bare_router)
        with rss:
            lat = await latencies(s, args.rate, args.seconds)
        twos: list[float] = []
        two_cpu: dict[str, list[float]] = {}
        if args.scale_runs:
            say("starting a second router process in the same group …")
            routers.append(
                router_service(s, "tongda-bench-2", run / "router-2.log", origin_s, keys)
            )
            await routers[1].start(ready_timeout=90)
            rss.watch("router 2", routers[1].pid)
            await wait_for_members(s, group, 2, 120)
            for j in range(args.scale_runs):
                with rss:
                    twos.append(
                        await router_rate(
                            s,
                            group,
                            routers,
                            args.n,
                            args.runs + j,
                            redis.pid,
                            two_cpu,
                            broker.pid,
                            reader,
                        )
                    )
                say(f"two routers: {twos[-1]:,.0f}/s")
        return table(
            args.n,
            raws,
            routeds,
            twos,
            lat,
            args.rate,
            rss.peak,
            cpu,
            bare,
            raw_cpu,
            two_cpu,
            args.backends_nice,
        )
    finally:
        await readers.aclose()
        for router in routers:
            router.send(signal.SIGCONT)  # a router stopped for another's round, too
            await router.stop()
        await broker.stop()
        await redis.stop()
        redis.wipe()  # its AOF: hundreds of MB a bench


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=int(os.environ.get("BENCH_N", "20000")))
    p.add_argument("--runs", type=int, default=3, help="throughput runs (median reported)")
    p.add_argument("--scale-runs", type=int, default=3, help="runs with two routers (0: none)")
    p.add_argument(
        "--bare-runs",
        type=int,
        default=3,
        help="of the runs, how many also drain with the contact rules off (preset none), beside "
        "the same raw round (0: none)",
    )
    p.add_argument(
        "--backends-nice",
        type=int,
        default=-10,
        help="the broker's and Redis' nice value: they have cores of their own in production "
        "(0: the same priority as the routers)",
    )
    p.add_argument("--rate", type=int, default=2000)
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
