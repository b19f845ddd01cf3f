"""Process supervision: a child with its log file, its process group, its stop signal."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tools.devstack.base import (
    INFRA_STOP_TIMEOUT_S,
    REPO_ROOT,
    DevstackError,
    ServiceError,
    log_tail,
    now_iso,
)
from tools.devstack.net import free_port


def proc_start_ticks(pid: int) -> int | None:
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
            "start_ticks": proc_start_ticks(pid) if pid else None,
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
            log.write(f"--- {now_iso()} devstack: starting {shlex.join(self.argv)}\n".encode())
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
                        f"--- {now_iso()} devstack: no exit {grace_s:.0f} s after "
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
