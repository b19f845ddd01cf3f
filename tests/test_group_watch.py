"""A consumer group membership that never completes is reported, and tongda's consumers do not
cause it: `GroupWatch` (shared/health.py) turns readiness 503 when no assignment comes, and
consumers close without LeaveGroup by default (`kafka_leave_group_on_close`, shared/kafka.py).

The fault injected through the real broker is the one the fault campaign found
(docs/reliability.md, "The router start that hung"): on Tansu 0.6, when the group's leader
sends LeaveGroup while another member's join has started a rebalance, the coordinator keeps
waiting for the gone leader, and the remaining member is never assigned anything."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from shared.config import CommonSettings, RouterSettings
from shared.health import GroupWatch
from shared.kafka import GroupListener, configure_group_leave, make_consumer, make_producer
from shared.topics import ensure_topics
from tests.conftest import StackFactory
from tools.bench import notification
from tools.devstack.service import Service

SESSION_MS = 3_000
LEADER_SESSION_MS = 8_000  # A notices a rebalance at its next heartbeat, 2 s apart


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def stuck_metric(service: str, group: str) -> float | None:
    return REGISTRY.get_sample_value(
        "tongda_consumer_group_stuck", {"service": service, "group": group}
    )


async def test_group_watch_reports_a_join_or_rebalance_that_gets_no_assignment() -> None:
    clock = FakeClock()
    watch = GroupWatch("tongda-test-gw", "g1", stuck_after_s=60.0, clock=clock)
    watch.joining()
    clock.now += 59.0
    assert await watch.stuck() is None
    clock.now += 2.0
    reason = await watch.stuck()
    assert reason is not None and "consumer group g1" in reason and "61 s" in reason
    assert stuck_metric("tongda-test-gw", "g1") == 1.0
    watch.assigned()  # an empty assignment counts: the group completed
    assert await watch.stuck() is None and stuck_metric("tongda-test-gw", "g1") == 0.0
    clock.now += 1000.0  # assigned long ago: not stuck
    assert await watch.stuck() is None
    watch.revoked()  # a rebalance starts now, not when the consumer joined
    clock.now += 30.0
    assert await watch.stuck() is None and watch.waiting_s() == 30.0
    clock.now += 31.0
    assert await watch.stuck() is not None
    watch.revoked()  # revoked again before any assignment: still counted from the first
    assert watch.waiting_s() == 61.0


class Events(GroupListener):
    """A GroupListener that also lets the test await the first revocation and assignment."""

    def __init__(self, watch: GroupWatch) -> None:
        super().__init__(watch)
        self.revoked_after_assignment = asyncio.Event()
        self.assigned_once = asyncio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if self.assigned_once.is_set():
            self.revoked_after_assignment.set()
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await super().on_partitions_assigned(assigned)
        self.assigned_once.set()


def _member(
    s: CommonSettings, group: str, topic: str, name: str
) -> tuple[AIOKafkaConsumer, Events]:
    watch = GroupWatch(f"tongda-test-{name}", group, stuck_after_s=4 * SESSION_MS / 1000)
    consumer = make_consumer(s, group, [], name)
    events = Events(watch)
    consumer.subscribe([topic], listener=events)
    watch.joining()
    return consumer, events


@pytest.fixture
async def leave_setting() -> AsyncIterator[None]:
    yield
    configure_group_leave(CommonSettings())  # the default again for the tests that follow


@dataclass
class Joiner:
    consumer: AIOKafkaConsumer
    events: Events
    start: asyncio.Task[None]

    async def stop(self) -> None:
        self.start.cancel()
        await asyncio.gather(self.start, return_exceptions=True)
        await self.consumer.stop()


async def _members(broker: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        (described,) = await admin.describe_consumer_groups([group])
        return len(described.groups[0][5])  # (error, group, state, type, protocol, members)
    finally:
        await admin.close()


async def _leader_leaves_during_a_join(broker: str, leave: bool) -> Joiner:
    """Member A is assigned (and leads); member B joins, which opens a rebalance; A stops
    before its next heartbeat would make it rejoin. Returns B, still joining."""

    def settings(session_ms: int) -> CommonSettings:
        return CommonSettings(
            kafka_bootstrap=broker,
            kafka_session_timeout_ms=session_ms,
            kafka_leave_group_on_close=leave,
        )

    topic = settings(SESSION_MS).topics.requested
    await ensure_topics(settings(SESSION_MS))
    group = f"tongda-test-{uuid.uuid4().hex[:8]}"
    a, a_events = _member(settings(LEADER_SESSION_MS), group, topic, "a")  # heartbeat 2 s
    await a.start()
    await asyncio.wait_for(a_events.assigned_once.wait(), 30)
    b, b_events = _member(settings(SESSION_MS), group, topic, "b")
    joiner = Joiner(b, b_events, asyncio.create_task(b.start()))
    try:
        while await _members(broker, group) < 2:  # B's join reached the coordinator
            assert not joiner.start.done()
            await asyncio.sleep(0.02)
        assert not a_events.revoked_after_assignment.is_set(), "A rejoined first: too slow"
        await a.stop()
    except BaseException:
        await joiner.stop()
        raise
    return joiner


async def test_a_member_that_stops_without_leave_group_hands_over_after_its_session(
    broker: str, leave_setting: None
) -> None:
    """tongda's default: A closes without LeaveGroup, the coordinator drops it when its
    session times out, and B is assigned both partitions."""
    b = await _leader_leaves_during_a_join(broker, leave=False)
    try:
        await asyncio.wait_for(b.events.assigned_once.wait(), 2 * LEADER_SESSION_MS / 1000)
        assert await b.events.watch.stuck() is None
        topic = CommonSettings().topics.requested
        every = b.consumer.partitions_for_topic(topic)
        assert every and b.consumer.assignment() == {TopicPartition(topic, p) for p in every}
    finally:
        await b.stop()


@pytest.mark.slow
async def test_a_group_that_never_assigns_is_reported_stuck(
    broker: str, leave_setting: None
) -> None:
    """With LeaveGroup on close (Kafka clients' default), the leader's leave during B's join
    wedges the group on this broker (Tansu 0.6): B waits for ever, and its GroupWatch says so
    once `stuck_after_s` has passed, as the readiness check and metric the services use."""
    b = await _leader_leaves_during_a_join(broker, leave=True)
    watch = b.events.watch
    try:
        deadline = asyncio.get_running_loop().time() + watch.stuck_after_s + 10
        reason = None
        while reason is None and asyncio.get_running_loop().time() < deadline:
            if b.events.assigned_once.is_set():
                pytest.skip("this broker completed the rebalance (no wedge to observe)")
            reason = await watch.stuck()
            await asyncio.sleep(0.2)
        assert reason is not None and "no partitions assigned" in reason
        assert stuck_metric("tongda-test-b", watch.group) == 1.0
    finally:
        await b.stop()


class FaustNamed(RoundRobinPartitionAssignor):  # type: ignore[misc]
    """Joins a group under the protocol name faust's consumers use."""

    name = "faust"


async def _wedge(broker: str, group: str, topic: str) -> None:
    """Leave `group` waiting for a leader that is gone (the fault above), with no members."""
    configure_group_leave(CommonSettings(kafka_leave_group_on_close=True))

    def member(session_ms: int) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker,
            group_id=group,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=session_ms // 4,
            partition_assignment_strategy=(FaustNamed,),
        )

    a, b = member(LEADER_SESSION_MS), member(SESSION_MS)
    await a.start()
    b_start = asyncio.create_task(b.start())
    try:
        while await _members(broker, group) < 2:  # noqa: ASYNC110 (the broker's view)
            await asyncio.sleep(0.02)
        await a.stop()  # the leader leaves while B's join is open
    finally:
        b_start.cancel()
        await asyncio.gather(b_start, return_exceptions=True)
        await b.stop()
    configure_group_leave(CommonSettings())


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_the_router_routes_and_says_why_when_faust_group_never_assigns(
    stack_factory: StackFactory, leave_setting: None
) -> None:
    """The router's faust group (the inquiries agents) is wedged before the router starts:
    the router still opens its API and routes notifications (its batch loop and scheduler do
    not wait for faust), and /readyz answers 503 naming the faust group."""
    stack = await stack_factory(services=())
    group = f"tongda-router-wedged-{uuid.uuid4().hex[:6]}"
    await ensure_topics(RouterSettings(kafka_bootstrap=stack.bootstrap, faust_app_id=group))
    await _wedge(stack.bootstrap, group, stack.settings().topics.inquiries)
    env = {
        **stack.service_env("router"),
        "TONGDA_FAUST_APP_ID": group,
        "TONGDA_GROUP_STUCK_AFTER_S": "5",
    }
    router = Service("router", stack.log_dir / "router.log", env=env)
    router.spawn()
    try:
        headers = {"Authorization": f"Bearer {stack.api_token}"}
        failures: dict[str, str] = {}
        async with aiohttp.ClientSession(base_url=router.url) as http:
            while "inquiries_group" not in failures:  # 503 with the reason, within ~5 s
                assert router.running, router.tail()
                try:
                    async with http.get("/readyz") as resp:
                        body = await resp.json()
                        failures = body.get("failures", {}) if resp.status == 503 else {}
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.2)
            assert group in failures["inquiries_group"]
            assert set(failures) == {"inquiries_group"}, failures  # routing itself is fine
            producer = make_producer(stack.settings(), "test-wedge")
            await producer.start()
            try:
                await producer.send_and_wait(
                    stack.settings().topics.requested, notification(1, run=7), key=b"cust-7-1"
                )
            finally:
                await producer.stop()
            nid = orjson.loads(notification(1, run=7))["id"]
            while True:  # routed: its state is readable through the API
                async with http.get(f"/v1/notifications/{nid}", headers=headers) as resp:
                    if resp.status == 200:
                        state = await resp.json()
                        break
                    assert resp.status == 404
                await asyncio.sleep(0.2)
            assert state["attempts"] or state.get("status") is not None
    finally:
        await router.stop()
