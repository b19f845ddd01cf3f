"""`python -m services.router` as a process configured only by TONGDA_* variables, for the
transport-security tests (TLS in tests/test_transport_security.py, SASL in
tests/test_kafka_sasl.py): started, awaited until ready, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from shared.config import CommonSettings
from shared.kafka import make_consumer, make_producer
from tests.router_support import push_request
from tests.signing_keys import SIGNING_ENV
from tools.devstack import REPO_ROOT, free_port


@dataclass(frozen=True)
class RouterProcess:
    port: int
    log_path: Path

    def log_tail(self) -> str:
        return self.log_path.read_text()[-3000:]


@contextlib.asynccontextmanager
async def router_process(tmp_path: Path, env: dict[str, str]) -> AsyncIterator[RouterProcess]:
    """The router with the variables every test gives it (signing keys, API token, HTTP
    address, text logs, no policy preset, its own faust data directory) and `env`; yielded
    once `/readyz` answers 200. On exit: SIGTERM, and it must exit 0 within 45 s."""
    port = free_port()
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **SIGNING_ENV,
        "TONGDA_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "TONGDA_API_TOKEN": "t",
        "TONGDA_HTTP_HOST": "127.0.0.1",
        "TONGDA_HTTP_PORT": str(port),
        "TONGDA_LOG_FORMAT": "text",
        "TONGDA_POLICY_PRESET": "none",
        "TONGDA_FAUST_DATADIR": str(tmp_path / "faust"),
        **env,
    }
    router = RouterProcess(port, tmp_path / "router.log")
    with router.log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.router",
            cwd=REPO_ROOT,
            env=full,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(60):
                while True:
                    assert proc.returncode is None, router.log_tail()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.2)  # no event to await: the process is polled
        yield router
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            status = await asyncio.wait_for(proc.wait(), 45)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert status == 0, router.log_tail()


async def a_request_comes_out_as_a_dispatch(
    s: CommonSettings, tag: str, router: RouterProcess
) -> None:
    """Publish a `repayment_due` for a push token (clients built from `s`) and read its push
    dispatch back."""
    nid, cid = f"{tag}-0001", f"c-{tag}"
    producer = make_producer(s, f"{tag}-e2e")
    reader = make_consumer(s, f"{tag}-e2e-reader", [s.topics.dispatch("push")], f"{tag}-e2e")
    await producer.start()
    await reader.start()
    try:
        request = push_request(nid, cid, f"tok-{tag}")
        await producer.send_and_wait(s.topics.requested, request, key=cid.encode())
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(30):
            while not found:
                batch = await reader.getmany(timeout_ms=500)
                found += [orjson.loads(r.value or b"{}") for rs in batch.values() for r in rs]
        assert [d["notification_id"] for d in found] == [nid], router.log_tail()
    finally:
        await reader.stop()
        await producer.stop()
