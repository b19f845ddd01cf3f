"""tools.devstack and the fixtures built on it: real broker, real Redis, real processes."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from shared.config import CommonSettings
from shared.topics import topic_specs
from tools.conversations import CONVERSATIONS
from tools.demo import (
    demo_stack_options,
    run_demo,
    stack_endpoints,
    summary,
    with_conversations,
)
from tools.devstack import (
    REPO_ROOT,
    Broker,
    RedisServer,
    Service,
    ServiceError,
    Stack,
    free_port,
    pid_alive,
    port_open,
    redis_ping,
)
from tools.scenarios import RULES, SCENARIOS

# A stand-in service: serves /readyz like the real ones, steered by STUB_MODE.
STUB_SERVICE = textwrap.dedent(
    """
    import asyncio, os, signal, sys, time
    from aiohttp import web

    MODE = os.environ.get("STUB_MODE", "ok")

    async def main() -> None:
        if MODE == "die":
            print("stub: fatal config error", flush=True)
            sys.exit(3)
        t0 = time.monotonic()
        delay = float(os.environ.get("STUB_DELAY", "0"))

        async def readyz(_: web.Request) -> web.Response:
            if MODE == "never" or time.monotonic() - t0 < delay:
                return web.json_response({"status": "not_ready"}, status=503)
            return web.json_response({"status": "ready"})

        app = web.Application()
        app.router.add_get("/readyz", readyz)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(os.environ["TONGDA_HTTP_PORT"])).start()
        print("stub: listening", flush=True)
        stop = asyncio.Event()
        if MODE != "stubborn":
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        else:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: None)
        await stop.wait()
        print("stub: stopping", flush=True)
        await runner.cleanup()

    asyncio.run(main())
    """
)


@pytest.fixture
def stub_module(tmp_path: Path) -> dict[str, str]:
    """Env that makes `python -m stubsvc` importable."""
    (tmp_path / "stubsvc.py").write_text(STUB_SERVICE)
    return {"PYTHONPATH": str(tmp_path)}


def test_free_port_hands_out_distinct_free_ports() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert not any(port_open("127.0.0.1", p) for p in ports)


async def test_broker_fixture_round_trips_a_record(broker: str) -> None:
    topic = f"devstack-test-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, b'{"hello": "world"}', key=b"c-1", headers=[("error", b"none")]
        )
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
    finally:
        await consumer.stop()
    [record] = batch[tp]
    assert (record.key, record.value) == (b"c-1", b'{"hello": "world"}')
    assert list(record.headers) == [("error", b"none")]


async def test_broker_fixture_created_every_tongda_topic(broker: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    expected = {s.name for s in topic_specs(CommonSettings(kafka_bootstrap=broker))}
    assert expected <= existing


async def test_redis_fixture_is_our_own_server(redis: Redis, redis_server: str) -> None:
    assert await redis.ping()
    assert not redis_server.endswith(":6379/0")
    await redis.set("devstack:leftover", b"1")


async def test_redis_fixture_is_flushed_between_tests(redis: Redis) -> None:
    # runs after the test above, which left a key behind
    assert await redis.dbsize() == 0


def test_settings_env_points_settings_at_our_servers(
    settings_env: object, broker: str, redis_server: str
) -> None:
    assert callable(settings_env)
    env = settings_env(http_port=8181, topics__audit="audit.test")
    settings = CommonSettings()
    assert settings.kafka_bootstrap == broker
    assert settings.redis_url == redis_server
    assert settings.http_port == 8181
    assert settings.topics.audit == "audit.test"
    assert env["TONGDA_TOPICS__AUDIT"] == "audit.test"


def test_redis_keeps_its_state_across_restarts_and_kills(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis.log")
    server.start()
    try:
        client = SyncRedis(host="127.0.0.1", port=server.port)
        try:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "always"}
            client.set("kept", b"1")
            server.restart()  # SIGTERM: the AOF is flushed on the way out
            assert client.get("kept") == b"1"
            client.set("kept", b"2")
            # SIGKILL: with appendfsync always redis writes and fsyncs the AOF before it
            # replies, so an acknowledged write survives
            server.kill()
            server.start()
            assert client.get("kept") == b"2"
        finally:
            client.close()
        assert any(server.data_dir.glob("appendonlydir/*.aof"))
    finally:
        server.stop_sync()
    server.wipe()
    server.start()
    try:
        client = SyncRedis(host="127.0.0.1", port=server.port)
        try:
            assert client.dbsize() == 0
        finally:
            client.close()
    finally:
        server.stop_sync()


def test_broker_and_redis_restart_on_the_same_port(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker.log")
    redis = RedisServer(tmp_path / "redis.log")
    broker.start()
    redis.start()
    try:
        pids = (broker.pid, redis.pid)
        broker.restart()
        redis.restart()
        assert (broker.pid, redis.pid) != pids
        assert port_open("127.0.0.1", broker.port)
        assert redis_ping("127.0.0.1", redis.port)
        broker.kill()
        assert not broker.running
    finally:
        broker.stop_sync()
        redis.stop_sync()
    assert not port_open("127.0.0.1", broker.port)
    assert not redis_ping("127.0.0.1", redis.port)


async def test_service_start_restart_kill_stop(tmp_path: Path, stub_module: dict[str, str]) -> None:
    svc = Service(
        "stub", tmp_path / "stub.log", module="stubsvc", env={**stub_module, "STUB_DELAY": "0.5"}
    )
    waited = await svc.start(ready_timeout=20)
    try:
        assert waited >= 0.4
        assert svc.ready and svc.running
        first_pid = svc.pid
        await svc.restart(ready_timeout=20)
        assert svc.pid != first_pid and svc.ready
        svc.kill()
        assert not svc.running and not svc.ready
        assert first_pid is not None and not pid_alive(first_pid)
        await svc.start(ready_timeout=20)
    finally:
        await svc.stop()
    assert not svc.running
    log = (tmp_path / "stub.log").read_text()
    assert log.count("devstack: starting") == 3  # a restart appends to the same log
    assert "stub: stopping" in log  # SIGTERM was a graceful stop


async def test_service_that_ignores_sigterm_is_killed(
    tmp_path: Path, stub_module: dict[str, str]
) -> None:
    svc = Service(
        "stub",
        tmp_path / "stub.log",
        module="stubsvc",
        env={**stub_module, "STUB_MODE": "stubborn"},
    )
    await svc.start(ready_timeout=20)
    await svc.stop(grace_s=0.5)
    assert not svc.running
    assert "SIGKILL" in (tmp_path / "stub.log").read_text()


async def test_service_death_reports_its_log_tail(
    tmp_path: Path, stub_module: dict[str, str]
) -> None:
    svc = Service(
        "stub", tmp_path / "stub.log", module="stubsvc", env={**stub_module, "STUB_MODE": "die"}
    )
    with pytest.raises(ServiceError, match=r"(?s)exited with code 3.*fatal config error"):
        await svc.start(ready_timeout=20)
    assert not svc.running


async def test_service_never_ready_times_out_with_the_last_answer(
    tmp_path: Path, stub_module: dict[str, str]
) -> None:
    svc = Service(
        "stub", tmp_path / "stub.log", module="stubsvc", env={**stub_module, "STUB_MODE": "never"}
    )
    with pytest.raises(ServiceError, match=r"(?s)not ready after 2 s.*HTTP 503.*stub: listening"):
        await svc.start(ready_timeout=2)
    assert not svc.running


async def test_stack_with_infrastructure_only(tmp_path: Path) -> None:
    async with Stack(run_dir=tmp_path, services=(), progress=None) as stack:
        env = stack.env()
        assert env["TONGDA_KAFKA_BOOTSTRAP"] == stack.bootstrap
        assert env["TONGDA_REDIS_URL"] == stack.redis_url
        assert len(env["TONGDA_API_TOKEN"]) >= 24
        assert redis_ping("127.0.0.1", stack.redis.port)
        router_env = stack.service_env("router")
        assert router_env["TONGDA_API_TOKEN"] == stack.api_token
        assert stack.service_env("sms")["TONGDA_CHANNEL"] == "sms"
    assert not stack.broker.running and not stack.redis.running


async def test_stack_reports_a_service_that_cannot_start(tmp_path: Path) -> None:
    stack = Stack(
        run_dir=tmp_path,
        services=("sms",),
        service_env={"sms": {"PYTHONPATH": str(tmp_path)}},
        progress=None,
        ready_timeout_s=20,
    )
    stack.services["sms"].module = "no_such_module_here"
    with pytest.raises(ServiceError, match=r"(?s)sms exited.*No module named"):
        await stack.start()
    assert not stack.broker.running and not stack.redis.running


def _devstack(run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.devstack", "--run-dir", str(run_dir), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_up_status_down_round_trip(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    up = _devstack(run_dir, "up", "--services", "")
    assert up.returncode == 0, up.stderr
    try:
        assert "export TONGDA_KAFKA_BOOTSTRAP=" in up.stdout
        env_text = (run_dir / "env").read_text()
        # both hold the API token: readable by the owner only
        assert stat.S_IMODE((run_dir / "env").stat().st_mode) == 0o600
        assert stat.S_IMODE((run_dir / "pids").stat().st_mode) == 0o600
        assert "TONGDA_REDIS_URL=" in env_text and "TONGDA_API_TOKEN=" in env_text
        token = next(
            line.split("=", 1)[1] for line in env_text.splitlines() if "TONGDA_API_TOKEN=" in line
        )
        assert token not in up.stdout and token not in up.stderr  # only in the 0600 file
        pids = json.loads((run_dir / "pids").read_text())
        procs = pids["processes"]
        assert set(procs) == {"broker", "redis"}
        assert all(pid_alive(p["pid"], p["start_ticks"]) for p in procs.values())

        again = _devstack(run_dir, "up", "--services", "")
        assert again.returncode == 0 and "already up" in again.stdout
        assert token not in again.stdout

        status = _devstack(run_dir, "status")
        assert status.returncode == 0, status.stdout
        assert "DOWN" not in status.stdout
    finally:
        down = _devstack(run_dir, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (run_dir / "pids").exists()
    assert not any(pid_alive(p["pid"], p["start_ticks"]) for p in procs.values())
    assert _devstack(run_dir, "status").returncode == 3


def _services_present() -> bool:
    return all(
        (REPO_ROOT / "services" / name / "__main__.py").exists()
        for name in ("router", "sms", "email", "push", "voice")
    )


@pytest.mark.skipif(not _services_present(), reason="router and channel services not built yet")
@pytest.mark.timeout(300)
async def test_demo_scenarios_end_to_end(stack_factory: Callable[..., Awaitable[Stack]]) -> None:
    """The demo's scripted scenarios on a full stack as `make demo` runs it (contact rules,
    simulated clock from 22:30 in Shanghai): every expected final status once, every
    expected rule decision in the audit; then the borrowers' conversations through
    /sandbox/inbound, each with its expected intent, tier, reply, escalation, preference
    and feedback (tools/conversations.py)."""
    stack = await stack_factory(**demo_stack_options())
    assert all(s.ready for s in stack.services.values())
    result = await run_demo(
        stack.bootstrap,
        say=None,
        deadline_s=120,
        scenarios=SCENARIOS + RULES,
        clock=stack.clock(),
    )
    result = await with_conversations(
        result, stack.bootstrap, stack_endpoints(stack), stack.clock(), SCENARIOS + RULES, None
    )
    assert len(result.conversations) == len(CONVERSATIONS)
    assert result.ok, summary(result, verbose=True)
    pids = [s.pid for s in stack.services.values()]
    await stack.stop()
    assert not any(pid is not None and pid_alive(pid) for pid in pids)
