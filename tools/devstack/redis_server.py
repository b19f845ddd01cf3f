"""Our own redis-server on a free port, with an append-only file like production."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from tools.devstack.base import HOST, INFRA_START_TIMEOUT_S, DevstackError, ServiceError
from tools.devstack.net import redis_ping
from tools.devstack.process import InfraProcess


class RedisServer(InfraProcess):
    """Our own `redis-server` on 127.0.0.1:`port`, persisted like production.

    It runs with the append-only file on (`appendonly yes`, `appendfsync always`, what
    docs/operations.md requires: no acknowledged write is lost) in `data_dir` (default:
    `redis-<port>` next to the log), so a restart (`restart()`, or `kill()` + `start()`) comes
    back with every write it acknowledged. `wipe()` deletes that state (a fresh stack starts
    from an empty Redis).
    """

    kind = "redis"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        log_path: Path,
        port: int | None = None,
        *,
        data_dir: Path | None = None,
        binary: str | None = None,
        detached: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(log_path, port, binary=binary, detached=detached)
        self.data_dir = data_dir or log_path.parent / f"redis-{self.port}"
        self.extra_args = list(extra_args)  # e.g. cluster mode (redis_cluster.py)

    def wipe(self) -> None:
        """Delete the persisted state (only while stopped)."""
        if self.running:
            raise DevstackError("wipe() needs a stopped redis-server")
        shutil.rmtree(self.data_dir, ignore_errors=True)

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

    @staticmethod
    def options(port: int, data_dir: Path) -> list[str]:
        """The command-line options every tongda redis-server runs with (loopback, no RDB
        snapshots, AOF with `appendfsync always`, in the foreground, logging to stdout)."""
        return [
            *("--port", str(port), "--bind", HOST, "--save", ""),
            *("--appendonly", "yes", "--appendfsync", "always"),
            *("--daemonize", "no", "--dir", str(data_dir), "--logfile", ""),
        ]

    def start(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Start and wait until it answers PING. Blocking (it takes ~50 ms)."""
        binary = self.binary or self.find_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._spawn([binary, *self.options(self.port, self.data_dir), *self.extra_args])
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
        """Stop and start again on the same port, with the state the AOF kept."""
        self.stop_sync()
        self.start(timeout)
