"""A local Prometheus with the project's rules, scraping given tongda services.

`make up` and the tests start one next to a dev stack: `write_config()` writes a scrape config
(one static target per service, labelled `namespace` and `service` like the Kubernetes
ServiceMonitor does, so the dashboards and rules read the same labels) and
`PrometheusServer` runs the Debian `prometheus` binary on a free port of 127.0.0.1 with the
rules in deploy/prometheus/rules. `query()` asks its HTTP API.

    python -m tools.prometheus --target tongda-router=127.0.0.1:8080 --target ...

runs one in the foreground until Ctrl-C and prints its URL.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tools.devstack.base import HOST, INFRA_START_TIMEOUT_S, REPO_ROOT, DevstackError
from tools.devstack.net import http_get
from tools.devstack.process import InfraProcess

RULES_DIR = REPO_ROOT / "deploy" / "prometheus" / "rules"
DEFAULT_NAMESPACE = "local"  # the `namespace` label of local targets (k8s: the namespace)


class PromQLError(DevstackError):
    """Prometheus refused a query (a parse error, an unknown function, ...)."""


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    return sorted(rules_dir.glob("*.rules.yml"))


def config(
    targets: Mapping[str, str],
    *,
    namespace: str = DEFAULT_NAMESPACE,
    scrape_interval_s: float = 5.0,
    rules: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """A prometheus.yml scraping `targets` ({service name: host:port}, e.g. "tongda-router":
    "127.0.0.1:8080") every `scrape_interval_s`, evaluating `rules` (default: the project's)."""
    interval = f"{max(1, round(scrape_interval_s * 1000))}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p.resolve()) for p in (rule_files() if rules is None else rules)],
        "scrape_configs": [
            {
                "job_name": "tongda",
                # the services' own `service` label (tongda-router, ...) is the target's too
                "honor_labels": True,
                "metrics_path": "/metrics",
                "static_configs": [
                    {"targets": [address], "labels": {"namespace": namespace, "service": name}}
                    for name, address in sorted(targets.items())
                ],
            }
        ],
    }


def write_config(path: Path, targets: Mapping[str, str], **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config(targets, **kwargs), sort_keys=False))
    return path


class PrometheusServer(InfraProcess):
    """`prometheus` on 127.0.0.1:`port` with `config_path`, its TSDB in `data_dir`."""

    kind = "prometheus"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        log_path: Path,
        config_path: Path,
        data_dir: Path,
        port: int | None = None,
        *,
        binary: str | None = None,
        detached: bool = False,
    ) -> None:
        super().__init__(log_path, port, binary=binary, detached=detached)
        self.config_path = config_path
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @staticmethod
    def find_binary() -> str:
        found = shutil.which("prometheus")
        if not found:
            raise DevstackError("prometheus not found: apt-get install -y prometheus")
        return found

    def start(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Start and wait until /-/ready answers 200. Blocking (about a second)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            [
                self.binary or self.find_binary(),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                "--storage.tsdb.retention.time=1d",
                f"--web.listen-address={HOST}:{self.port}",
                "--log.level=warn",
            ]
        )
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                raise self._died("while starting")
            try:
                status, _ = http_get(HOST, self.port, "/-/ready", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            if time.monotonic() > deadline:
                self.stop_sync()
                raise DevstackError(f"prometheus not ready after {timeout:.0f} s ({self.log_path})")
            time.sleep(0.1)

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>?params; the `data` of a success, PromQLError otherwise."""
        query = urllib.parse.urlencode(params)
        status, body = http_get(HOST, self.port, f"/api/v1/{path}?{query}", timeout=10.0)
        reply = json.loads(body)
        if status != 200 or reply.get("status") != "success":
            raise PromQLError(f"{reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now; the result vector (or [] for no data)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def metric_names(self) -> set[str]:
        return set(self.api("label/__name__/values"))

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def targets_up(self) -> dict[str, bool]:
        """{service: last scrape succeeded} for the active targets."""
        active = self.api("targets", state="active")["activeTargets"]
        return {t["labels"]["service"]: t["health"] == "up" for t in active}


def start_local(
    run_dir: Path,
    ports: Mapping[str, int],
    *,
    scrape_interval_s: float = 5.0,
    port: int | None = None,
    detached: bool = False,
) -> PrometheusServer:
    """Start a Prometheus under `run_dir`/prometheus scraping the services on 127.0.0.1
    ({"router": 8080, "sms": 8081, ...}), with the project's rules; `.url` is where it answers.
    For `make up` (detached=True: it outlives the caller; stop it through its `record()`)."""
    work = run_dir / "prometheus"
    targets = {f"tongda-{name}": f"{HOST}:{p}" for name, p in ports.items()}
    cfg = write_config(work / "prometheus.yml", targets, scrape_interval_s=scrape_interval_s)
    server = PrometheusServer(work / "prometheus.log", cfg, work / "data", port, detached=detached)
    server.start()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.prometheus", description=__doc__)
    parser.add_argument(
        "--target", action="append", default=[], metavar="SERVICE=HOST:PORT", required=True
    )
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".run" / "prometheus")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--interval", type=float, default=5.0, help="scrape interval, seconds")
    args = parser.parse_args(argv)
    targets = dict(t.split("=", 1) for t in args.target)
    cfg = write_config(args.dir / "prometheus.yml", targets, scrape_interval_s=args.interval)
    server = PrometheusServer(args.dir / "prometheus.log", cfg, args.dir / "data", args.port)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server.start()
    print(f"Prometheus: {server.url} (rules: {RULES_DIR.relative_to(REPO_ROOT)})", flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        server.stop_sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
