"""Shared fixtures: our own Kafka broker and Redis (never the machine's 6379), and full stacks.

* `broker` (session): Tansu on a free port with every tongda topic created; yields the
  bootstrap string. `broker_process` is the `tools.devstack.Broker` behind it.
* `redis_server` (session): our own redis-server on a free port; yields its URL.
  `redis_process` is the `tools.devstack.RedisServer` behind it.
* `redis` (function): a `redis.asyncio.Redis` on that server, FLUSHALLed before each test.
* `redis_cluster` (session): our own Redis Cluster (three primaries in cluster mode, started
  on first use); yields its `redis+cluster://` URL. `redis_cluster_process` is the
  `tools.devstack.RedisClusterServers` behind it.
* `settings_env` (function): sets TONGDA_* for settings classes read from the environment.
* `stack_factory` / `stack` (function): a full `tools.devstack.Stack` (router + channels),
  stopped after the test; a failing test prints the tail of every service log.

The session fixtures are synchronous on purpose: they are subprocesses ready in
milliseconds, so they need no event loop and work with any test's loop scope.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis, RedisCluster

from shared.config import RouterSettings
from shared.redis import make_redis
from tests.signing_keys import SIGNING_ENV
from tools.devstack import Broker, RedisClusterServers, RedisServer, Stack

T = TypeVar("T")


def run_in_own_loop(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread, so a synchronous
    fixture can do async set-up without touching the loop pytest-asyncio manages."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None) or getattr(request.node, "rep_setup", None)
    return bool(rep is not None and rep.failed)


@pytest.fixture(scope="session")
def devstack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's broker and Redis write their logs."""
    return tmp_path_factory.mktemp("devstack")


@pytest.fixture(scope="session")
def broker_process(devstack_dir: Path) -> Iterator[Broker]:
    broker = Broker(devstack_dir / "broker.log")
    broker.start()
    try:
        run_in_own_loop(broker.create_topics)
        yield broker
    finally:
        broker.stop_sync()


@pytest.fixture(scope="session")
def broker(broker_process: Broker) -> str:
    """Bootstrap address (host:port) of the session's broker; tongda's topics exist."""
    return broker_process.bootstrap


@pytest.fixture(scope="session")
def redis_process(devstack_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(devstack_dir / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop_sync()


@pytest.fixture(scope="session")
def redis_server(redis_process: RedisServer) -> str:
    """URL of the session's own Redis (redis://127.0.0.1:<port>/0)."""
    return redis_process.url


@pytest.fixture(scope="session")
def redis_cluster_process(devstack_dir: Path) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(devstack_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_sync()


@pytest.fixture(scope="session")
def redis_cluster(redis_cluster_process: RedisClusterServers) -> str:
    """URL of the session's own Redis Cluster (redis+cluster://127.0.0.1:<p1>,...)."""
    return redis_cluster_process.url


@pytest.fixture
async def cluster(redis_cluster: str) -> AsyncIterator[RedisCluster]:
    """A client on the session's Redis Cluster, made as the services make theirs."""
    client = make_redis(RouterSettings(api_token="t", redis_url=redis_cluster))
    assert isinstance(client, RedisCluster)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def redis(redis_server: str) -> AsyncIterator[Redis]:
    """A client on our own Redis, emptied (FLUSHALL) before the test, closed after it."""
    client = Redis.from_url(redis_server)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


SettingsEnv = Callable[..., dict[str, str]]


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, broker: str, redis_server: str) -> SettingsEnv:
    """`settings_env(http_port=0, topics__audit="x")` clears every TONGDA_* variable, sets
    TONGDA_KAFKA_BOOTSTRAP / TONGDA_REDIS_URL to the session's broker and Redis plus one
    TONGDA_<NAME> per keyword (nested with `__`), and returns what it set. Undone after
    the test."""

    def apply(**overrides: object) -> dict[str, str]:
        for key in list(os.environ):
            if key.startswith("TONGDA_"):
                monkeypatch.delenv(key)
        env = {
            "TONGDA_KAFKA_BOOTSTRAP": broker,
            "TONGDA_REDIS_URL": redis_server,
            "TONGDA_LOG_FORMAT": "text",
            **SIGNING_ENV,
        }
        env.update({f"TONGDA_{k.upper()}": str(v) for k, v in overrides.items()})
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return env

    return apply


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def stack_factory(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[StackFactory]:
    """`await stack_factory(**StackOptions fields)` starts a full stack on free ports (logs
    under tmp_path); every stack started is stopped after the test."""
    stacks: list[Stack] = []

    async def start(**overrides: Any) -> Stack:
        overrides.setdefault("run_dir", tmp_path / f"stack{len(stacks)}")
        overrides.setdefault("sandbox_time_scale", 0.05)
        # The contact rules depend on the time of day: tests of other things run without
        # them; tests of the rules pick a preset and a simulated clock themselves.
        overrides.setdefault("policy_preset", "none")
        # A group on this broker forms half a session timeout after a join: 1 s instead of 3
        # per start and per restart (the channel and router harnesses do the same).
        overrides["extra_env"] = {
            "TONGDA_KAFKA_SESSION_TIMEOUT_MS": "2000",
            **overrides.get("extra_env", {}),
        }
        stack = Stack(**overrides)
        stacks.append(stack)
        await stack.start()
        return stack

    try:
        yield start
    finally:
        if _failed(request):
            for stack in stacks:
                peers = stack.peers.processes if stack.peers is not None else []
                for proc in (*stack.services.values(), stack.broker, stack.redis, *peers):
                    print(f"\n--- {proc.name}: {proc.log_path}\n{proc.tail(40)}", file=sys.stderr)
        for stack in reversed(stacks):
            await stack.stop()


@pytest.fixture
async def stack(stack_factory: StackFactory) -> Stack:
    """A full stack (broker, Redis, router, sms, email, push, voice) with default options."""
    return await stack_factory()
