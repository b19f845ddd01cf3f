"""Redis CPU per apply.lua transition, A/B: `python -m tools.bench_lua [--base REF]`.

Records the transitions the real engine (`RouterEngine.process`, as `tools.bench_engine` runs
it: the bench's `overdue_notice` events, the cn rules, a stopped clock) hands to
`Store.apply`: the first moves of `--n` notifications, then, for each dispatch, the
`delivered` outcome a channel service would report (a second transition: the ledger's
inflight entry becomes answered, timers, timeline, the final status). Then replays the same
chunks, in order, on an emptied Redis (AOF on, as the bench runs it) with apply.lua and
`Store._apply_command` of the work tree and of git `--base` (default HEAD) in turn, `--reps`
times each, and prints per transition: Redis' time in EVALSHA (INFO commandstats, which
counts the script's own commands too), its commands, and Redis' process CPU (from /proc:
also the AOF writes and the network). The replay is one pipelined round trip per recorded
batch, as the router sends them.

With `--callgrind`, the replays run on a second Redis under valgrind's callgrind, and Redis'
instructions per transition are printed too: repeatable on a machine shared with others,
where times move by ±30 % from one replay to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson
from aiokafka.structs import ConsumerRecord, TopicPartition
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.router.core import build_core
from services.router.outbox import OutRecord
from services.router.plans import load_plans
from services.router.policy import load_policy
from services.router.store import Store, Transition
from shared.clock import Clock
from shared.config import RouterSettings
from shared.gctune import gc_paused
from shared.kafka import Batch, make_producer
from shared.resp import execute
from shared.signing import Signer
from tools.bench import BENCH_CLOCK, backends, cpu_s, engine_settings
from tools.bench_engine import batches
from tools.devstack import REPO_ROOT, RedisServer


def outcomes(
    topic: str, partitions: int, dispatches: Sequence[bytes], size: int, signer: Signer
) -> list[Batch]:
    """A `delivered` outcome for each dispatch, signed, as consumed batches of `size`."""
    out: list[Batch] = []
    offsets = [0] * partitions
    for start in range(0, len(dispatches), size):
        batch: Batch = {}
        for i in range(start, min(len(dispatches), start + size)):
            d = msgspec.json.decode(dispatches[i])
            value = msgspec.json.encode(
                {
                    "schema": "tongda.outcome/v1",
                    "notification_id": d["notification_id"],
                    "customer_id": d["customer_id"],
                    "channel": d["channel"],
                    "leg": d["leg"],
                    "attempt": d["attempt"],
                    "outcome": "delivered",
                    "provider": "bench",
                    "at": d["dispatched_at"],
                }
            )
            p = i % partitions
            key = d["customer_id"].encode()
            batch.setdefault(TopicPartition(topic, p), []).append(
                ConsumerRecord(
                    topic,
                    p,
                    offsets[p],
                    0,
                    0,
                    key,
                    value,
                    None,
                    0,
                    len(value),
                    [signer.header(key, value)],
                )
            )
            offsets[p] += 1
        out.append(batch)
    return out


async def record(args: argparse.Namespace, s: RouterSettings, redis: Redis) -> list[list[bytes]]:
    """The engine's apply chunks (msgpack of the Transitions), per batch processed."""
    producer = make_producer(s, "bench-lua")
    await producer.start()
    core = await build_core(s, load_plans(s.plans_path), load_policy("cn"), redis, producer)
    engine = core.engine
    engine.clock = Clock(1.0, BENCH_CLOCK, 0.0)
    store = engine.store
    seen: list[bytes] = []
    dispatches: list[bytes] = []
    real_apply = store.apply

    def apply(chunk: Sequence[Transition]) -> Any:
        seen.append(msgspec.msgpack.encode(list(chunk)))
        for t in chunk:
            for eid, blob in t.outbox:
                r = OutRecord.unpack(eid, blob)
                if r.topic.startswith(s.topics.dispatch("")):
                    dispatches.append(r.value)
        return real_apply(chunk)

    store.apply = apply  # type: ignore[method-assign]
    per_batch: list[list[bytes]] = []
    todo = batches(s.topics.requested, s.kafka_topic_partitions, args.n, args.batch, 0)
    if args.per_customer > 1:  # customers with several notifications in a batch
        for batch in todo:
            for records in batch.values():
                for i, r in enumerate(records):
                    body = orjson.loads(r.value)
                    n = int(body["customer_id"].rsplit("-", 1)[1]) // args.per_customer
                    body["customer_id"] = f"cust-0-{n}"
                    value = orjson.dumps(body)
                    records[i] = dataclasses.replace(
                        r,
                        key=body["customer_id"].encode(),
                        value=value,
                        serialized_value_size=len(value),
                    )
    for phase in ("requested", "outcomes"):
        if phase == "outcomes":
            parts = s.kafka_topic_partitions
            todo = outcomes(
                s.topics.router_inbox, parts, dispatches, args.batch, Signer.from_settings(s)
            )
        for batch in todo:
            with gc_paused():
                await engine.process(batch)
            per_batch.append(seen[:])
            seen.clear()
        await engine.outbox.flush()
        print(f"{phase}: {sum(map(len, per_batch))} chunks so far", flush=True)
    await producer.stop()
    return per_batch


def base_store(ref: str) -> tuple[type[Store], str]:
    """`Store` and apply.lua as of git `ref`."""

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{ref}:{path}"],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    module = types.ModuleType("_base_store")
    module.__file__ = str(REPO_ROOT / "services" / "router" / "store.py")
    sys.modules["_base_store"] = module
    exec(compile(show("services/router/store.py"), "_base_store", "exec"), module.__dict__)
    return module.Store, show("services/router/lua/apply.lua")


class Callgrind:
    """A redis-server under callgrind (AOF on, as the bench's), counting on demand."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "callgrind"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={self.dir}/cg.out",
                "redis-server",
                *RedisServer.options(self.port, self.dir),
                *("--auto-aof-rewrite-percentage", "0"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.dumps = 0

    async def redis(self) -> Redis:
        r = Redis(host="127.0.0.1", port=self.port, socket_timeout=600)
        for _ in range(600):
            try:
                await r.ping()
                return r
            except (OSError, RedisError):
                await asyncio.sleep(0.1)
        raise RuntimeError("redis-server under callgrind did not start")

    def control(self, *opts: str) -> None:
        subprocess.run(
            ["callgrind_control", *opts, str(self.proc.pid)], check=True, capture_output=True
        )

    def count(self) -> int:
        """Instructions since the last zero (dumped and read)."""
        self.control("-d")
        self.dumps += 1
        text = (self.dir / f"cg.out.{self.dumps}").read_text()
        return int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("summary:")))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        shutil.rmtree(self.dir / "appendonlydir", ignore_errors=True)  # the dumps stay


@dataclasses.dataclass
class Replay:
    """Per transition: Redis' µs in EVALSHA, its process CPU µs, each command's (calls, µs),
    its instructions (under callgrind)."""

    evalsha: float
    cpu: float
    commands: dict[str, tuple[float, float]]
    instructions: float


async def replay(
    redis: Redis,
    store: Store,
    per_batch: list[list[bytes]],
    pid: int | None,
    cg: Callgrind | None = None,
) -> Replay:
    """The recorded chunks applied by `store` on an emptied Redis."""
    await redis.flushall()
    await store.load_scripts()
    chunks = [[msgspec.msgpack.decode(c, type=list[Transition]) for c in b] for b in per_batch]
    n = sum(len(c) for b in chunks for c in b)
    await redis.config_resetstat()
    if cg:
        cg.control("-z")
    before = cpu_s(pid)
    for b in chunks:
        commands = [cmd for c in b for cmd, _ in store.apply(c)]
        replies = await execute(redis, commands)
        if any(not isinstance(r, list) for r in replies):
            raise RuntimeError(f"apply failed: {replies[:3]}")
    cpu = (cpu_s(pid) - before) / n * 1e6
    instructions = cg.count() / n if cg else 0.0
    stats = await redis.info("commandstats")
    per = {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}
    usec = per["evalsha"][1]
    per_t = {k: (c / n, u / n) for k, (c, u) in per.items()}
    return Replay(usec / n, cpu, per_t, instructions)


async def compare(
    args: argparse.Namespace,
    s: RouterSettings,
    redis: Redis,
    per_batch: list[list[bytes]],
    pid: int | None,
    cg: Callgrind | None,
) -> None:
    """Replay with the base's and the work tree's apply.lua in turn; print the tables."""
    Base, base_lua = base_store(args.base)
    horizon = load_policy("cn").caps.horizon_s

    def make(cls: type[Store]) -> Store:
        return cls(
            redis,
            s.key_prefix,
            s.retention_s,
            s.timeline_max_records,
            horizon,
            groups=s.redis_key_groups,
        )

    stores = {"base": make(Base), "new": make(Store)}
    stores["base"]._sources["apply"] = base_lua
    results: dict[str, list[Replay]] = {k: [] for k in stores}
    for _ in range(args.reps):
        for name, st in stores.items():
            results[name].append(await replay(redis, st, per_batch, pid, cg))
    n = sum(len(msgspec.msgpack.decode(c)) for b in per_batch for c in b)
    print(f"\n{n} transitions in {sum(map(len, per_batch))} calls, {args.reps} replays each")
    print("| per transition (µs) | base: median [min–max] | new: median [min–max] |")
    print("|---|---|---|")
    rows = [("EVALSHA (commandstats)", "evalsha"), ("Redis process CPU", "cpu")]
    if cg:
        rows.append(("Redis instructions (callgrind), thousands", "instructions"))
    for label, attr in rows:
        cells = []
        for name in stores:
            scale = 1000 if attr == "instructions" else 1
            xs = [getattr(r, attr) / scale for r in results[name]]
            cells.append(f"{statistics.median(xs):.1f} [{min(xs):.1f}–{max(xs):.1f}]")
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    print("\n| command: calls, µs per transition (last replay) | base | new |\n|---|---|---|")
    last = {name: results[name][-1].commands for name in stores}
    names = sorted(
        set(last["base"]) | set(last["new"]), key=lambda k: -last["base"].get(k, (0, 0))[1]
    )
    for k in names:
        cells = ["{:.2f}, {:.2f}".format(*last[name].get(k, (0, 0))) for name in stores]
        print(f"| {k} | {cells[0]} | {cells[1]} |")


async def main_async(args: argparse.Namespace) -> None:
    async with backends(REPO_ROOT / ".run" / "bench-lua") as (broker, redis_server):
        s = engine_settings(broker, redis_server)
        await broker.create_topics(s)
        redis = Redis.from_url(s.redis_url)
        per_batch = await record(args, s, redis)
        await redis.config_set("auto-aof-rewrite-percentage", 0)  # no rewrite mid-replay
        cg = Callgrind(REPO_ROOT / ".run" / "bench-lua") if args.callgrind else None
        try:
            if cg:
                await redis.aclose()
                redis = await cg.redis()
            await compare(args, s, redis, per_batch, cg.proc.pid if cg else redis_server.pid, cg)
        finally:
            await redis.aclose()
            if cg:
                cg.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="notifications")
    p.add_argument("--batch", type=int, default=2_000, help="records per consumed batch")
    p.add_argument("--reps", type=int, default=5, help="replays of each variant")
    p.add_argument("--base", default="HEAD", help="git ref of the other variant")
    p.add_argument("--callgrind", action="store_true", help="replay under callgrind too")
    p.add_argument(
        "--per-customer", type=int, default=1, help="notifications per customer (1: the bench's)"
    )
    args = p.parse_args()
    os.environ.setdefault("TONGDA_LOG_LEVEL", "WARNING")
    t0 = time.monotonic()
    asyncio.run(main_async(args))
    print(f"({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
