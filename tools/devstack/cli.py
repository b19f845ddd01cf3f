"""`python -m tools.devstack up|down|status`: a detached stack kept in .run/pids and .run/env."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tools.devstack.base import (
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_RUN_DIR,
    DEFAULT_STOP_TIMEOUT_S,
    HOST,
    INFRA_STOP_TIMEOUT_S,
    SERVICES,
    DevstackError,
    masked,
    now_iso,
)
from tools.devstack.net import http_get, port_open, redis_ping
from tools.devstack.process import pid_alive
from tools.devstack.stack import Stack


def _env_text(env: Mapping[str, str]) -> str:
    lines = [f"# tongda dev stack, written {now_iso()} by `python -m tools.devstack up`"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


SECRET_NAMES = ("TOKEN", "PASSWORD", "SECRET", "KEY")


def _shown_env(env: Mapping[str, str], env_path: Path) -> str:
    """The env as printed on the terminal: secrets are only in the file (mode 0600)."""
    return _env_text(
        {
            k: f"<see {env_path}>" if any(word in k for word in SECRET_NAMES) else v
            for k, v in env.items()
        }
    )


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` readable by its owner only (0600): both files hold the API token."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


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
            print(_shown_env(existing.get("env", {}), run_dir / "env"), end="")
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
        time_scale=args.time_scale,
        clock_start=args.clock_start,
        sandbox_time_scale=args.sandbox_time_scale,
        policy_preset=args.policy,
        providers=args.providers,
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
    records, env = stack.records(), stack.env()
    if args.prometheus and stack.services:
        prometheus = _start_prometheus(run_dir, stack)
        if prometheus is not None:
            records["processes"]["prometheus"] = prometheus.record()
            env["TONGDA_PROMETHEUS_URL"] = prometheus.url
    _write_private(run_dir / "pids", json.dumps(records, indent=2) + "\n")
    _write_private(run_dir / "env", _env_text(env))
    print(f"up in {time.monotonic() - t0:.1f} s; logs in {stack.log_dir}/")
    if "TONGDA_PROMETHEUS_URL" in env:
        print(f"Prometheus with tongda's rules: {env['TONGDA_PROMETHEUS_URL']}")
    print(f"# . {run_dir / 'env'}")
    print(_shown_env(env, run_dir / "env"), end="")
    return 0


def _start_prometheus(run_dir: Path, stack: Stack) -> Any:
    """Prometheus scraping every service with the project's rules (deploy/prometheus), or
    None (with a note) when the `prometheus` binary is not installed."""
    if shutil.which("prometheus") is None:
        print("prometheus not installed (apt-get install prometheus): not started")
        return None
    from tools.prometheus import start_local

    ports = {name: svc.port for name, svc in stack.services.items() if svc.port}
    return start_local(run_dir, ports, detached=True)


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
    if kind == "peer":  # a local provider peer (tools/devstack/peers.py): alive is enough
        return True, "running"
    if kind == "prometheus":
        try:
            status, _ = http_get(HOST, port, "/-/ready")
        except OSError as exc:
            return False, f"/-/ready: {type(exc).__name__}"
        return status == 200, f"/-/ready {status}"
    try:
        status, body = http_get(HOST, port, "/readyz")
    except OSError as exc:
        return False, f"/readyz: {type(exc).__name__}"
    detail = "ready" if status == 200 else masked(body[:200].decode("utf-8", "replace"))
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
    up.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="real seconds per simulated second for every service's clock, scheduled delays "
        "and the sandbox (0.01: a 15-minute call-back after 9 s)",
    )
    up.add_argument(
        "--clock-start",
        type=datetime.fromisoformat,
        default=None,
        help="start the simulated clock at this instant, e.g. 2026-11-23T22:30:00+08:00",
    )
    up.add_argument(
        "--sandbox-time-scale", type=float, default=None, help="the sandbox's delays only"
    )
    up.add_argument(
        "--policy", choices=("cn", "us", "none"), default=None, help="contact-rules preset"
    )
    up.add_argument(
        "--no-prometheus",
        dest="prometheus",
        action="store_false",
        help="do not start Prometheus (started by default when installed)",
    )
    up.add_argument(
        "--providers",
        choices=("sandbox", "local"),
        default="sandbox",
        help="local: the channels' real providers against local peers "
        "(SMPP+Twilio, SMTP, FCM, SIPp)",
    )
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
