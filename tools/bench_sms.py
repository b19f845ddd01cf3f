"""`make bench-sms`: sustained SMPP submits/s against the test SMSC, beside the account's limit.

One run: our own redis-server and a test SMSC (services/sms/smpp/testsmsc.py) each in its own
process on free ports, then three measurements with the real SmppProvider:
  1. no limit: what one client with its window reaches on this machine (the ceiling);
  2. the limit (default 500/s) in the shared Redis token bucket, one client;
  3. the same limit with two clients (two providers, two Redis pools) sharing the bucket,
     as two replicas would.
Every send is a one-part text with a delivery receipt. The sustained rate is measured over
the submit_sm_resp times after the first 10 % (the bucket's initial burst is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

from services.sms.smpp.provider import SmppProvider
from services.sms.smpp.settings import SmppSettings
from shared.channel.provider import Accepted, Inbound, ProviderContext, Receipt
from shared.config import ChannelSettings
from shared.contract.models import Dispatch
from shared.templates import Message
from tools.devstack.net import free_port, port_open
from tools.devstack.redis_server import RedisServer

PASSWORD = "bench"


@dataclass(frozen=True)
class Result:
    label: str
    limit: float
    clients: int
    sent: int
    rate: float
    seconds: float
    receipts: int


def make_dispatch(i: int) -> Dispatch:
    at = datetime.now(UTC)
    return Dispatch(
        notification_id=f"bench-{i}",
        customer_id=f"c-{i % 1000}",
        type="repayment_due",
        category="reminder",
        priority="normal",
        locale="zh-CN",
        channel="sms",
        leg=0,
        attempt=1,
        recipient=f"+86139{i % 1000000:06d}99",  # never a scripted suffix
        data={},
        dispatched_at=at,
        requested_at=at,
    )


async def run_case(
    label: str,
    redis_url: str,
    smsc_port: int,
    limit: float,
    clients: int,
    messages: int,
    window: int,
    account: str,
) -> Result:
    """`messages` sends spread over `clients` providers; the sustained submit rate."""
    receipts = 0

    async def on_receipt(_: Receipt) -> bool:
        nonlocal receipts
        receipts += 1
        return True

    async def on_inbound(_: Inbound) -> str:
        return ""

    settings = SmppSettings(
        port=smsc_port,
        system_id="tongda",
        password=PASSWORD,
        window=window,
        rate_per_s=limit,
        rate_max_wait_s=60.0,
    )
    channel = ChannelSettings(redis_url=redis_url, key_prefix=f"bench:{account}:")  # own bucket
    pools = [Redis.from_url(redis_url) for _ in range(clients)]
    providers = [SmppProvider(settings) for _ in range(clients)]
    for provider, pool in zip(providers, pools, strict=True):
        await provider.start(ProviderContext(channel, pool, on_receipt, on_inbound))
        await provider.wait_bound(10.0)
    message = Message(subject="", body="您的贷款本期应还1200.00元，请按时还款。")
    done: list[float] = []
    slots = asyncio.Semaphore(window * 2)

    async def one(provider: SmppProvider, i: int) -> None:
        async with slots:
            result = await provider.send(make_dispatch(i), message)
        if not isinstance(result, Accepted):
            raise RuntimeError(f"send {i}: {result}")
        done.append(time.perf_counter())

    began = time.perf_counter()
    try:
        await asyncio.gather(*(one(providers[i % clients], i) for i in range(messages)))
    finally:
        for provider in providers:
            await provider.close()
        for pool in pools:
            await pool.aclose()
    done.sort()
    skip = len(done) // 10
    span = done[-1] - done[skip]
    rate = (len(done) - 1 - skip) / span if span > 0 else float("inf")
    return Result(label, limit, clients, messages, rate, done[-1] - began, receipts)


async def bench(args: argparse.Namespace, redis_url: str, smsc_port: int) -> list[Result]:
    cases = [
        ("no limit", 0.0, 1, args.messages),
        (f"limit {args.limit:g}/s", args.limit, 1, args.messages),
        (f"limit {args.limit:g}/s, 2 clients", args.limit, 2, args.messages),
    ]
    results = []
    for n, (label, limit, clients, messages) in enumerate(cases):
        result = await run_case(
            label, redis_url, smsc_port, limit, clients, messages, args.window, f"acct{n}"
        )
        results.append(result)
        print(
            f"  {label:<28} {result.rate:>8.0f} submits/s sustained "
            f"({result.sent} in {result.seconds:.1f} s, {result.receipts} receipts)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=float, default=500.0, help="contracted submits/s")
    parser.add_argument("--messages", type=int, default=3000, help="sends per measurement")
    parser.add_argument("--window", type=int, default=10, help="submit_sm in flight per bind")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="tongda-bench-sms-"))
    redis = RedisServer(workdir / "redis.log")
    redis.start()
    smsc_port = free_port()
    smsc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.sms.smpp.testsmsc",
            "--port",
            str(smsc_port),
            "--password",
            PASSWORD,
            "--receipt-delay",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "smsc.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", smsc_port):
            if smsc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the test SMSC did not start; see {workdir / 'smsc.log'}")
            time.sleep(0.05)
        print(
            f"SMPP submit_sm against the test SMSC (window {args.window}, 1 bind per client, "
            f"one-part UCS-2 texts with receipts):",
            flush=True,
        )
        asyncio.run(bench(args, redis.url, smsc_port))
    finally:
        smsc.terminate()
        smsc.wait(10)
        redis.stop_sync()
        shutil.rmtree(workdir, ignore_errors=True)  # Redis' AOF and the logs


if __name__ == "__main__":
    main()
