"""Our own Redis Cluster: three redis-server primaries in cluster mode on free ports, joined
by `redis-cli --cluster create` (no replicas), persisted like production (appendfsync always).

Tests run the router on it (tests/conftest.py `redis_cluster`) to show that every atomic
call touches one hash slot (docs/operations.md, "Redis Cluster"): a call that does not
fails with CROSSSLOT there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tools.devstack.base import HOST, INFRA_START_TIMEOUT_S, DevstackError, ServiceError
from tools.devstack.net import free_port, port_open
from tools.devstack.redis_server import RedisServer


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, the nodes' gossip) is free too."""
    for _ in range(500):
        port = free_port()
        if port + 10_000 <= 65_535 and not port_open(HOST, port + 10_000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((HOST, port + 10_000))
                except OSError:
                    continue
            return port
    raise DevstackError("no free port pair (port, port + 10000) for a Redis Cluster node")


class RedisClusterServers:
    """`size` primaries; `url` is the `redis+cluster://` form TONGDA_REDIS_URL accepts."""

    def __init__(self, run_dir: Path, size: int = 3) -> None:
        self.run_dir = run_dir
        self.nodes: list[RedisServer] = []
        for i in range(size):
            log = run_dir / f"redis-cluster-{i}.log"
            node = RedisServer(log, cluster_port())
            node.extra_args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node.data_dir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
            self.nodes.append(node)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes) + "/"

    def cli(self, *args: str, port: int | None = None, timeout: float = 30.0) -> str:
        binary = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        cmd = [binary, "-h", HOST, "-p", str(port or self.nodes[0].port), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise ServiceError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self, timeout: float = INFRA_START_TIMEOUT_S) -> None:
        """Start the nodes, create the cluster, wait until every node says cluster_state:ok."""
        for node in self.nodes:
            node.start(timeout)
        addresses = [f"{HOST}:{n.port}" for n in self.nodes]
        self.cli("--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes")
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            while "cluster_state:ok" not in self.cli("cluster", "info", port=node.port):
                if time.monotonic() > deadline:
                    raise DevstackError(f"Redis Cluster not ok after {timeout:.0f} s")
                time.sleep(0.05)

    def stop_sync(self) -> None:
        for node in self.nodes:
            node.stop_sync()
