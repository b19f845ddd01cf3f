"""The stack: broker + Redis + topics + the router and channel services, all on free ports."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from shared.clock import Clock
    from shared.config import CommonSettings

from tools.devstack.base import (
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_RUN_DIR,
    DEFAULT_STOP_TIMEOUT_S,
    HOST,
    PROGRESS_EVERY_S,
    SERVICES,
    DevstackError,
    Progress,
    ServiceError,
    now_iso,
    stderr_progress,
)
from tools.devstack.broker import Broker
from tools.devstack.peers import PROVIDERS, LocalProviders
from tools.devstack.redis_server import RedisServer
from tools.devstack.service import Service


@dataclass(frozen=True)
class StackOptions:
    """How to start a stack. Every port is picked free; nothing here is shared state."""

    run_dir: Path = DEFAULT_RUN_DIR
    log_dir: Path | None = None  # default: <run_dir>/logs
    data_dir: Path | None = None  # files services keep (faust's datadir); default <run_dir>/data
    services: tuple[str, ...] = SERVICES
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    sandbox_time_scale: float | None = None  # TONGDA_SANDBOX_TIME_SCALE for the channels
    log_format: str = "json"
    log_level: str | None = None
    plans_path: Path | None = None
    policy_preset: str | None = None  # TONGDA_POLICY_PRESET for the router (default: cn)
    # The stack's clock (shared/clock.py), the same for every service: real seconds per
    # simulated second, and the simulated instant the stack starts at (None: now).
    time_scale: float = 1.0
    clock_start: datetime | None = None
    api_token: str | None = None  # default: a fresh secrets.token_urlsafe()
    # "sandbox": the channels' sandbox providers; "local": their real providers (SMPP, SMTP,
    # FCM, SIP) against local peers started with the stack (tools/devstack/peers.py)
    providers: str = "sandbox"
    # TONGDA_SIGNING_KEYS / TONGDA_SIGNING_KEY_ID for every service (shared/signing.py);
    # default: one fresh key, id "dev", for this stack only
    signing_keys: Mapping[str, str] | None = None
    signing_key_id: str = ""
    extra_env: Mapping[str, str] = field(default_factory=dict)  # every service
    # a Redis of one's own (e.g. a Redis Cluster: redis+cluster://…) instead of starting one;
    # the stack neither starts, wipes nor stops it
    redis_url: str | None = None
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # per service
    detached: bool = False
    progress: Progress | None = stderr_progress


class Stack:
    """Broker + Redis + topics + services. `async with Stack(...) as stack:` starts and stops it."""

    def __init__(self, options: StackOptions | None = None, **overrides: Any) -> None:
        opts = replace(options or StackOptions(), **overrides)
        unknown = [s for s in opts.services if s not in SERVICES]
        if unknown:
            raise DevstackError(f"unknown service(s) {unknown}; known: {', '.join(SERVICES)}")
        self.options = opts
        self.log_dir = opts.log_dir or opts.run_dir / "logs"
        self.data_dir = opts.data_dir or opts.run_dir / "data"
        self.api_token = opts.api_token or secrets.token_urlsafe(24)
        self.signing_keys = dict(opts.signing_keys or {"dev": secrets.token_urlsafe(32)})
        self.clock_origin_epoch_s = 0.0  # a simulated clock starts when the stack is ready
        self.broker = Broker(self.log_dir / "broker.log", detached=opts.detached)
        self.redis = RedisServer(
            self.log_dir / "redis.log", data_dir=self.data_dir / "redis", detached=opts.detached
        )
        if opts.providers not in PROVIDERS:
            raise DevstackError(f"unknown providers {opts.providers!r}; one of {PROVIDERS}")
        self.peers = (
            LocalProviders(self.log_dir, self.data_dir, opts.time_scale, opts.detached)
            if opts.providers == "local"
            else None
        )
        self.services: dict[str, Service] = {
            name: Service(
                name,
                self.log_dir / f"{name}.log",
                self.peers.service_port(name) if self.peers is not None else None,
                env=self.service_env(name),
                detached=opts.detached,
            )
            for name in opts.services
        }
        self.timings: dict[str, float] = {}

    # -- addresses --
    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        return self.options.redis_url or self.redis.url

    @property
    def router_url(self) -> str:
        return self.services["router"].url if "router" in self.services else ""

    def service(self, name: str) -> Service:
        return self.services[name]

    def settings(self) -> CommonSettings:
        from shared.config import CommonSettings

        return CommonSettings(
            kafka_bootstrap=self.bootstrap,
            redis_url=self.redis_url,
            signing_keys=self.signing_keys,
            signing_key_id=self.options.signing_key_id,
        )

    def signing_env(self) -> dict[str, str]:
        """The signing keys every service of the stack shares (secrets: .run/env only)."""
        env = {"TONGDA_SIGNING_KEYS": json.dumps(self.signing_keys)}
        if self.options.signing_key_id:
            env["TONGDA_SIGNING_KEY_ID"] = self.options.signing_key_id
        return env

    def service_env(self, name: str) -> dict[str, str]:
        """The TONGDA_* environment `name` runs with (TONGDA_HTTP_PORT is added at spawn)."""
        o = self.options
        env = {
            "TONGDA_KAFKA_BOOTSTRAP": self.bootstrap,
            "TONGDA_REDIS_URL": self.redis_url,
            "TONGDA_HTTP_HOST": HOST,
            "TONGDA_LOG_FORMAT": o.log_format,
            **self.signing_env(),
        }
        if o.log_level:
            env["TONGDA_LOG_LEVEL"] = o.log_level
        if o.time_scale != 1.0 or o.clock_start is not None:
            env["TONGDA_TIME_SCALE"] = repr(o.time_scale)
            if o.clock_start is not None:
                env["TONGDA_CLOCK_START"] = o.clock_start.isoformat()
        if name == "router":
            env["TONGDA_API_TOKEN"] = self.api_token
            # Tansu can skip an offset of a partition several producers write at once; the
            # dev publishers write no transaction markers, so a jump on the requests is one
            env["TONGDA_KAFKA_OFFSET_GAP_CHECK_REQUESTS"] = "true"
            # faust's datadir: one per stack, never the shared default under /tmp
            env["TONGDA_FAUST_DATADIR"] = str(self.data_dir.resolve() / "router")
            if o.plans_path:
                env["TONGDA_PLANS_PATH"] = str(o.plans_path.resolve())
            if o.policy_preset:
                env["TONGDA_POLICY_PRESET"] = o.policy_preset
        else:
            env["TONGDA_CHANNEL"] = name
            scale = o.sandbox_time_scale if o.sandbox_time_scale is not None else o.time_scale
            if scale != 1.0:
                env["TONGDA_SANDBOX_TIME_SCALE"] = repr(scale)
        if self.peers is not None:
            env.update(self.peers.service_env(name))
        env.update(o.extra_env)
        env.update(o.service_env.get(name, {}))
        return env

    def env(self) -> dict[str, str]:
        """What a client needs (written to .run/env by `up`)."""
        env = {
            "TONGDA_KAFKA_BOOTSTRAP": self.bootstrap,
            "TONGDA_REDIS_URL": self.redis_url,
            "TONGDA_API_TOKEN": self.api_token,
            **self.signing_env(),
        }
        for name, svc in self.services.items():
            env[f"TONGDA_{name.upper()}_URL"] = svc.url
        o = self.options
        if o.clock_start is not None or o.time_scale != 1.0:
            env["TONGDA_TIME_SCALE"] = repr(o.time_scale)
            if o.clock_start is not None:
                env["TONGDA_CLOCK_START"] = o.clock_start.isoformat()
                env["TONGDA_CLOCK_ORIGIN_EPOCH_S"] = repr(self.clock_origin_epoch_s)
        return env

    # -- lifecycle --
    def _note(self, message: str) -> None:
        if self.options.progress:
            self.options.progress(message)

    async def start(self) -> Self:
        """Start everything; on any failure stop what was started and raise."""
        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # Both are ready in milliseconds: started inline, so a cancellation never
            # leaves one starting in a thread behind our back.
            self.broker.start()
            # The broker keeps its topics in memory: Redis state from an earlier stack would
            # describe records that no longer exist. Restarts within this stack keep the AOF.
            if self.options.redis_url is None:
                self.redis.wipe()
                self.redis.start()
            self.timings["infra"] = time.monotonic() - t0
            created = await self.broker.create_topics(self.settings())
            self.timings["topics"] = time.monotonic() - t0
            self._note(
                f"broker {self.bootstrap}, redis {self.redis_url}, {len(created)} topics created"
            )
            if self.peers is not None:
                await self.peers.start()
                self._note("local provider peers ready (logs peers.log, sipp.log)")
            if self.services:
                await self._start_services()
            await self._start_clock()
            self.timings["ready"] = time.monotonic() - t0
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start_clock(self) -> None:
        """A simulated clock shows clock_start until now: every service is ready."""
        o = self.options
        if o.clock_start is None:
            return
        from shared.clock import CLOCK_ORIGIN_KEY

        self.clock_origin_epoch_s = time.time()
        from shared.redis import make_redis

        client = make_redis(self.settings())
        try:
            await client.set(
                f"{self.settings().key_prefix}{CLOCK_ORIGIN_KEY}", repr(self.clock_origin_epoch_s)
            )
        finally:
            await client.aclose()
        self._note(f"simulated clock: {o.clock_start.isoformat()} now, x{1 / o.time_scale:g}")

    def clock(self) -> Clock:
        """The stack's clock, as its services read it."""
        from shared.clock import Clock

        o = self.options
        return Clock(o.time_scale, o.clock_start, self.clock_origin_epoch_s)

    async def _start_services(self) -> None:
        for svc in self.services.values():
            svc.spawn()
        names = ", ".join(f"{n} :{s.port}" for n, s in self.services.items())
        self._note(f"starting {names}")
        started = time.monotonic()
        tasks = {
            asyncio.create_task(
                svc.wait_ready(self.options.ready_timeout_s), name=f"ready-{name}"
            ): name
            for name, svc in self.services.items()
        }
        ticker = asyncio.create_task(self._tick(started))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            ticker.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(ticker, *tasks, return_exceptions=True)
        errors = [t.exception() for t in done if not t.cancelled() and t.exception()]
        for task, name in tasks.items():
            if task in done and not task.cancelled() and task.exception() is None:
                self.timings[name] = task.result()
        if errors:
            if len(errors) == 1 and errors[0] is not None:
                raise errors[0]
            raise ServiceError("\n\n".join(str(e) for e in errors))
        self._note(f"all {len(self.services)} services ready in {time.monotonic() - started:.1f} s")

    async def _tick(self, started: float) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            waiting = [n for n, s in self.services.items() if not s.ready]
            if waiting:
                self._note(f"waiting for {', '.join(waiting)} … {time.monotonic() - started:.0f} s")

    async def stop(self) -> None:
        """Services first (SIGTERM, in parallel), then the broker (SIGINT) and Redis."""
        results = await asyncio.gather(
            *(s.stop(self.options.stop_timeout_s) for s in self.services.values()),
            return_exceptions=True,
        )
        peers = [self.peers.stop()] if self.peers is not None else []
        await asyncio.gather(
            self.broker.stop(), self.redis.stop(), *peers, return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def records(self) -> dict[str, Any]:
        """The content of .run/pids."""
        procs: dict[str, Any] = {}
        peers = self.peers.processes if self.peers is not None else []
        for proc in (*self.services.values(), self.broker, self.redis, *peers):
            rec = proc.record()
            procs[proc.name] = rec
        return {"version": 1, "started_at": now_iso(), "env": self.env(), "processes": procs}
