"""One tongda service process (`python -m services.<name>`), ready when /readyz says 200."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from tools.devstack.base import (
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_STOP_TIMEOUT_S,
    HOST,
    PROGRESS_EVERY_S,
    Progress,
    ServiceError,
    masked,
)
from tools.devstack.net import async_http_get, free_port
from tools.devstack.process import ManagedProcess


class Service(ManagedProcess):
    """`python -m services.<name>` (or `module`) serving HTTP on 127.0.0.1:`port`."""

    kind = "service"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        name: str,
        log_path: Path,
        port: int | None = None,
        *,
        env: Mapping[str, str] | None = None,
        module: str | None = None,
        python: str = sys.executable,
        detached: bool = False,
    ) -> None:
        super().__init__(name, log_path, detached=detached)
        self.port = port or free_port()
        self.module = module or f"services.{name}"
        self.python = python
        self.env: dict[str, str] = dict(env or {})
        self.ready = False
        self.last_answer = "no answer yet"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def spawn(self) -> None:
        """Start the process without waiting for readiness."""
        self.ready = False
        self.last_answer = "no answer yet"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["TONGDA_HTTP_PORT"] = str(self.port)
        self._spawn([self.python, "-m", self.module], env)

    async def probe(self) -> bool:
        """One GET /readyz; True on 200. Remembers the last answer for error messages."""
        try:
            status, body = await async_http_get(HOST, self.port, "/readyz", timeout_s=5.0)
        except (OSError, TimeoutError) as exc:
            self.last_answer = f"no HTTP answer ({type(exc).__name__})"
            return False
        self.last_answer = f"HTTP {status} {body[:300].decode('utf-8', 'replace')}"
        return status == 200

    async def wait_ready(
        self, deadline_s: float = DEFAULT_READY_TIMEOUT_S, progress: Progress | None = None
    ) -> float:
        """Poll /readyz until 200; returns the seconds waited. Raises ServiceError with the
        log tail if the process exits or `deadline_s` passes."""
        started = time.monotonic()
        next_note = started + PROGRESS_EVERY_S
        while True:
            if not self.running:
                raise self._died("before it was ready")
            if await self.probe():
                self.ready = True
                return time.monotonic() - started
            now = time.monotonic()
            if now - started > deadline_s:
                raise ServiceError(
                    f"{self.name} not ready after {deadline_s:.0f} s (last /readyz: "
                    f"{masked(self.last_answer)}); last lines of {self.log_path}:\n{self.tail()}"
                )
            if progress and now >= next_note:
                progress(f"waiting for {self.name} … {now - started:.0f} s")
                next_note = now + PROGRESS_EVERY_S
            await asyncio.sleep(0.2)

    async def start(
        self, ready_timeout: float = DEFAULT_READY_TIMEOUT_S, progress: Progress | None = None
    ) -> float:
        """Spawn and wait for readiness; on failure the process is killed and the error raised."""
        self.spawn()
        try:
            return await self.wait_ready(ready_timeout, progress)
        except BaseException:
            self.kill()
            raise

    async def stop(self, grace_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to `grace_s` s (30 by default), then SIGKILL."""
        self.ready = False
        await super().stop(grace_s)

    def kill(self) -> None:
        self.ready = False
        super().kill()

    async def restart(
        self,
        ready_timeout: float = DEFAULT_READY_TIMEOUT_S,
        progress: Progress | None = None,
        *,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT_S,
    ) -> float:
        """Stop gracefully (if running) and start again on the same port."""
        await self.stop(stop_timeout)
        return await self.start(ready_timeout, progress)
