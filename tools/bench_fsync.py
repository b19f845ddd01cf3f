"""What `appendfsync always` costs the router, beside `everysec`, in one run.

`python -m tools.bench_fsync [--n 4000] [--rounds 3]` (`make bench-fsync`) starts a broker and
one Redis (AOF on), builds the router's core as production does (services/router/core.py,
the `cn` contact rules, a simulated Tuesday 10:00 in Shanghai) and feeds it batches of
`overdue_notice` requests, alternating Redis between `appendfsync everysec` and `always`
(`CONFIG SET`) round by round: each round's rate is requests fully processed per second
(state and ledger written by apply.lua, records produced and acknowledged). It prints the
median of each mode and their ratio. Why it matters: docs/reliability.md, "Redis losing its
last second".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aiokafka.structs import ConsumerRecord, TopicPartition
from redis.asyncio import Redis

from services.router.core import build_core
from services.router.plans import load_plans
from services.router.policy import load_policy
from shared.kafka import make_producer
from tools.bench import BENCH_CLOCK, backends, engine_settings, notification
from tools.devstack import REPO_ROOT

BATCH = 500


def batches(n: int, run: int, topic: str) -> list[dict[TopicPartition, list[ConsumerRecord]]]:
    tp = TopicPartition(topic, 0)
    out = []
    for start in range(0, n, BATCH):
        records = [
            ConsumerRecord(
                topic,
                0,
                i,
                0,
                0,
                f"cust-{run}-{i}".encode(),
                notification(i, run=run),
                None,
                0,
                0,
                [],
            )
            for i in range(start, min(n, start + BATCH))
        ]
        out.append({tp: records})
    return out


async def measure(n: int, rounds: int) -> dict[str, list[float]]:
    async with backends(REPO_ROOT / ".run" / "bench-fsync") as (broker, redis_server):
        s = engine_settings(
            broker,
            redis_server,
            signing_key_id="bench",
            clock_start=BENCH_CLOCK,
            clock_origin_epoch_s=time.time(),
            time_scale=20.0,  # no step timeout comes due during the run
        )
        await broker.create_topics(s)
        redis = Redis.from_url(s.redis_url)
        producer = make_producer(s, "bench-fsync")
        await producer.start()
        try:
            core = await build_core(s, load_plans(), load_policy("cn"), redis, producer)
            rates: dict[str, list[float]] = {"everysec": [], "always": []}
            run = 0
            for r in range(rounds):
                for mode in ("everysec", "always"):
                    run += 1
                    await redis.config_set("appendfsync", mode)
                    work = batches(n, run, s.topics.requested)
                    started = time.perf_counter()
                    for batch in work:
                        await core.engine.process(batch)
                    await core.outbox.flush()
                    rates[mode].append(n / (time.perf_counter() - started))
                    print(f"round {r + 1}/{rounds} {mode:>8}: {rates[mode][-1]:,.0f} requests/s")
            return rates
        finally:
            await producer.stop()
            await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="requests per round and mode")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates = asyncio.run(measure(args.n, args.rounds))
    every, always = statistics.median(rates["everysec"]), statistics.median(rates["always"])
    print(
        f"\n| appendfsync | requests/s (median of {args.rounds}) |\n|---|---|\n"
        f"| everysec | {every:,.0f} |\n| always | {always:,.0f} |\n"
        f"| ratio always / everysec | {always / every:.2f} |"
    )


if __name__ == "__main__":
    main()
