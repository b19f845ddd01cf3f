"""The router's CPU per event for whole batches, in process: `python -m tools.bench_engine`.

Between `tools.bench_cpu` (the pieces, no I/O) and `make bench` (the real process, wall
clock): `RouterEngine.process` on batches of the bench's `overdue_notice` events (one
borrower each, the `cn` contact rules, the clock stopped at a Tuesday 10:00 in Shanghai) with
a real broker and Redis (AOF on, as `make bench` runs it): decode, profiles and ledgers read,
first moves, the Lua calls, the dispatches produced and acknowledged, the outbox cleared. Not
counted: aiokafka's fetch and the offset commits. CPU is this process's (user + system) and
Redis' (from /proc), per event, for each round of `--n` events; the best and the median of
`--rounds` rounds are printed (the machine may be shared: CPU time, not wall time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from aiokafka.structs import ConsumerRecord, TopicPartition
from redis.asyncio import Redis

from services.router.core import build_core
from services.router.plans import load_plans
from services.router.policy import load_policy
from shared.clock import Clock
from shared.gctune import gc_paused, tune_gc
from shared.kafka import Batch, make_producer
from tools.bench import BENCH_CLOCK, backends, cpu_s, engine_settings, notification
from tools.devstack import REPO_ROOT


def batches(topic: str, partitions: int, n: int, size: int, run: int) -> list[Batch]:
    """`n` requests of round `run` (customers of their own), as consumed batches of `size`."""
    out: list[Batch] = []
    offsets = [0] * partitions
    for start in range(0, n, size):
        batch: Batch = {}
        for i in range(start, min(n, start + size)):
            p = i % partitions
            tp = TopicPartition(topic, p)
            key = f"cust-{run}-{i}".encode()
            value = notification(i, run=run)
            batch.setdefault(tp, []).append(
                ConsumerRecord(topic, p, offsets[p], 0, 0, key, value, None, 0, len(value), [])
            )
            offsets[p] += 1
        out.append(batch)
    return out


async def main_async(args: argparse.Namespace) -> None:
    async with backends(REPO_ROOT / ".run" / "bench-engine") as (broker, redis_server):
        s = engine_settings(broker, redis_server)
        await broker.create_topics(s)
        redis = Redis.from_url(s.redis_url)
        producer = make_producer(s, "bench-engine")
        await producer.start()
        core = await build_core(s, load_plans(s.plans_path), load_policy("cn"), redis, producer)
        engine = core.engine
        engine.clock = Clock(1.0, BENCH_CLOCK, 0.0)  # stopped: every round sees 10:00
        tune_gc(s.gc_gen0_threshold)
        parts = s.kafka_topic_partitions
        rows: list[tuple[float, float]] = []
        for r in range(args.warmup + args.rounds):
            todo = batches(s.topics.requested, parts, args.n, args.batch, r)
            before, redis_before = time.process_time(), cpu_s(redis_server.pid)
            for batch in todo:
                with gc_paused():
                    await engine.process(batch)
            await engine.outbox.flush()
            cpu = (time.process_time() - before) / args.n * 1e6
            rcpu = (cpu_s(redis_server.pid) - redis_before) / args.n * 1e6
            if r >= args.warmup:
                rows.append((cpu, rcpu))
            print(f"round {r + 1}: router {cpu:.1f} µs, Redis {rcpu:.1f} µs per event", flush=True)
        routers, rediss = [c for c, _ in rows], [c for _, c in rows]
        result = {
            "router_best": min(routers),
            "router_median": statistics.median(routers),
            "redis_best": min(rediss),
            "redis_median": statistics.median(rediss),
        }
        print(
            f"| CPU per event (N={args.n}, batches of {args.batch}, {args.rounds} rounds) "
            "| best | median |\n|---|---|---|\n"
            f"| router (this process) | {result['router_best']:.1f} | "
            f"{result['router_median']:.1f} |\n"
            f"| Redis | {result['redis_best']:.1f} | {result['redis_median']:.1f} |"
        )
        if args.json:
            print(json.dumps(result))
        if args.redis_stats:  # where Redis' time went, per command (all rounds, warm-up too)
            stats = await redis.info("commandstats")
            total = sum(v["usec"] for v in stats.values())
            rounds_n = (args.warmup + args.rounds) * args.n
            print("| Redis command | calls per event | µs per call | µs per event |")
            print("|---|---|---|---|")
            for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["usec"]):
                if v["usec"] >= total / 200:
                    print(
                        f"| {name.removeprefix('cmdstat_')} | {v['calls'] / rounds_n:.3f} "
                        f"| {v['usec_per_call']:.1f} | {v['usec'] / rounds_n:.1f} |"
                    )
        await producer.stop()
        await redis.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="events per round")
    p.add_argument("--batch", type=int, default=2_000, help="records per consumed batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    p.add_argument("--json", action="store_true", help="also print the result as JSON")
    p.add_argument(
        "--redis-stats", action="store_true", help="also print Redis' time per command"
    )
    args = p.parse_args()
    os.environ.setdefault("TONGDA_LOG_LEVEL", "WARNING")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
