"""The router as a faust-streaming application.

faust provides the lifecycle (worker, signals) and the agents for the low-volume inquiries
streams. The high-volume path (requests, profiles, attempt outcomes), the durable scheduler
and the HTTP API are `RouterService`'s: an aiokafka batch loop and a scheduler loop, because
faust's per-message cost caps it far below what the batch loop does (docs/performance.md).
The worker starts `RouterService` before the faust app, so routing, deferrals and `/readyz`
never wait for faust's own consumer group: when that group assigns nothing (a rebalance
that never completes), `/readyz` says so instead of the port staying closed
(docs/reliability.md, "The router start that hung").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.asyncio import Redis

from services.router.api import create_api
from services.router.core import build_core
from services.router.engine import RecoveringListener, RouterEngine
from services.router.inquiries import InquiryDesk
from services.router.intents import Classifier
from services.router.plans import PlanBook
from services.router.policy import ContactPolicy
from services.router.policy.localtime import one_zone_codes
from services.router.scheduler import Scheduler
from shared.config import RouterSettings
from shared.errors import InvalidEvent
from shared.gctune import freeze_now
from shared.health import GroupWatch, LagMeter
from shared.http import redis_check, server_options
from shared.kafka import (
    GroupListener,
    configure_group_leave,
    make_consumer,
    make_producer,
    send_deadletter,
)
from shared.redis import durability_warning, make_redis
from shared.security import faust_broker_credentials

log = logging.getLogger(__name__)


class RouterService(mode.Service):
    """The batch loop, the HTTP API and their clients, started and stopped with the app.

    Start order: Redis, the producer, the core, the HTTP API (answering `/readyz` from
    then on), the consumer, the batch loop and the scheduler loop.

    Stop order (SIGTERM, like Kubernetes does; the worker stops the faust app, i.e. the
    inquiries agents, first): the HTTP API stops taking requests and finishes those in
    flight → the scheduler loop finishes its tick → the batch loop stops taking batches and
    finishes the one in hand (state written, records acknowledged, offsets committed) → the
    consumer stops (its partitions move when its session times out, or at once with
    `kafka_leave_group_on_close`) → the producer flushes → Redis closes.
    """

    def __init__(
        self,
        settings: RouterSettings,
        plans: PlanBook,
        policy: ContactPolicy,
        classifier: Classifier,
        faust_group: GroupWatch | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.settings = settings
        self.faust_group = faust_group  # the inquiries agents' group (faust's consumer)
        self.batch_group = GroupWatch(
            RouterEngine.service, settings.consumer_group, settings.group_stuck_after_s
        )
        self.plans = plans
        self.policy = policy
        self.classifier = classifier
        self.desk: InquiryDesk | None = None
        self.redis: Redis | None = None
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.engine: RouterEngine | None = None
        self.scheduler: Scheduler | None = None
        self.runner: web.AppRunner | None = None
        self.stopping = asyncio.Event()
        self.loop_task: asyncio.Task[None] | None = None
        self.scheduler_task: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        s = self.settings
        self.redis = make_redis(s)
        if (warning := await durability_warning(self.redis)) is not None:
            log.warning(warning)
        self.producer = make_producer(s, f"{s.kafka_client_id}-router")
        await self.producer.start()
        core = await build_core(
            s, self.plans, self.policy, self.redis, self.producer, self.classifier
        )
        self.engine, self.scheduler, self.desk = core.engine, core.scheduler, core.desk
        self.consumer = make_consumer(s, s.consumer_group, [], f"{s.kafka_client_id}-router")
        self.consumer.subscribe(
            self.engine.input_topics(),
            listener=GroupListener(self.batch_group, RecoveringListener(self.engine)),
        )
        checks = [
            ("redis", redis_check(self.redis, core.store.meter)),
            ("kafka", self._kafka_check),
            ("router_loop", self._loop_check),
            ("consume_loop", self.engine.watchdog.check()),
            ("consumer_group", self.batch_group.check()),
        ]
        if self.faust_group is not None:
            checks.append(("inquiries_group", self.faust_group.check()))
        api = create_api(
            s,
            self.producer,
            self.redis,
            self.plans,
            self.desk,
            checks,
        )
        self.runner = web.AppRunner(api, handle_signals=False, access_log=None, **server_options(s))
        await self.runner.setup()
        await web.TCPSite(self.runner, s.http_host, s.http_port).start()
        self.batch_group.joining()
        await self.consumer.start()
        one_zone_codes()  # the calling codes' time zones: built here, not in the first batch
        freeze_now()  # what start-up allocated stays out of the collector's way
        self.loop_task = asyncio.create_task(self._run_loop(), name="router-batch-loop")
        self.scheduler_task = asyncio.create_task(self._run_scheduler(), name="router-scheduler")
        log.info("router started", extra={"http_port": s.http_port})

    async def _run_loop(self) -> None:
        assert self.engine is not None and self.consumer is not None
        backoff_s = 0.0
        while not self.stopping.is_set():
            ran_since = time.monotonic()
            try:
                await self.engine.run(self.consumer, self.stopping)
            except KafkaError as exc:  # e.g. a commit refused during a rebalance
                # Back off (up to 10 s) so an error that repeats is never a hot loop; an
                # error after a long healthy run starts again from the shortest delay.
                if time.monotonic() - ran_since > 30:
                    backoff_s = 0.0
                backoff_s = min(10.0, backoff_s * 2 or 0.2)
                log.warning(
                    "batch loop: %s; batch will be redelivered and deduplicated; again in %.1f s",
                    exc,
                    backoff_s,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), backoff_s)
            except Exception as exc:  # a bug: exit non-zero so the orchestrator restarts us
                log.critical("batch loop failed; stopping the router", exc_info=True)
                await self.crash(exc)
                return

    async def _run_scheduler(self) -> None:
        """Every `scheduler_interval_s`: due timers (deferrals, call-backs, step timeouts),
        then inquiry SLA deadlines; a failed tick (Redis or the broker away) is tried again
        at the next one."""
        assert self.scheduler is not None
        interval_s = self.settings.scheduler_interval_s
        while not self.stopping.is_set():
            try:
                await self.scheduler.tick()
                if self.desk is not None:
                    await self.desk.tick()
            except Exception:
                log.exception("scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval_s)

    async def _kafka_check(self) -> str | None:
        assert self.producer is not None
        parts = await self.producer.partitions_for(self.settings.topics.requested)
        return None if parts else "no partitions for the requested topic"

    async def _loop_check(self) -> str | None:
        if self.loop_task is None or self.loop_task.done():
            return "the batch loop is not running"
        if self.scheduler_task is None or self.scheduler_task.done():
            return "the scheduler loop is not running"
        return None

    async def on_stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        self.stopping.set()
        if self.scheduler_task is not None:
            await self.scheduler_task
        if self.loop_task is not None:
            try:
                await asyncio.wait_for(self.loop_task, self.settings.drain_timeout_s)
            except TimeoutError:
                log.error("batch loop did not finish within the drain timeout")
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.redis is not None:
            await self.redis.aclose()
        log.info("router stopped")


def create_app(
    settings: RouterSettings,
    plans: PlanBook,
    policy: ContactPolicy,
    classifier: Classifier | None = None,
) -> tuple[faust.App, RouterService]:
    """The router's whole wiring: the faust app with the agents for inquiries and their
    resolutions, and the service (batch loop, scheduler loop, HTTP API) the worker starts
    before it: `faust.Worker(app, service)`."""
    s = settings
    configure_group_leave(s)  # faust's consumer too (docs/reliability.md)
    session_s = s.kafka_session_timeout_ms / 1000
    app = faust.App(
        s.faust_app_id,
        broker=f"kafka://{s.kafka_bootstrap}",
        broker_credentials=faust_broker_credentials(s),
        web_enabled=False,
        processing_guarantee="at_least_once",
        topic_allow_declare=False,
        producer_acks=-1,
        broker_session_timeout=session_s,
        broker_rebalance_timeout=session_s,
        broker_heartbeat_interval=max(0.1, session_s / 4),
        datadir=str(s.faust_datadir),
    )
    faust_group = GroupWatch(RouterEngine.service, s.faust_app_id, s.group_stuck_after_s)
    faust_group.joining()
    service = RouterService(
        s, plans, policy, classifier or Classifier.from_file(s.intents_path), faust_group
    )

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        faust_group.revoked()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        faust_group.assigned()

    lag: list[LagMeter] = []  # the inquiries agents' consumer (faust's), once it exists

    @app.timer(interval=s.scheduler_interval_s)  # type: ignore[untyped-decorator]
    async def inquiries_lag() -> None:
        """tongda_consumer_lag_records of the inquiries agents' topics (faust's consumer)."""
        try:
            if not lag:
                topics = (s.topics.inquiries, s.topics.resolved)
                lag.append(LagMeter(RouterEngine.service, app.consumer, topics))
            await lag[0].update()
        except Exception as exc:  # not started yet, or a rebalance: the next tick measures
            log.debug("inquiries consumer lag not measured: %r", exc)

    async def handle(
        event: Any, what: str, handler: Callable[[InquiryDesk, bytes | None], Awaitable[str]]
    ) -> None:
        """One inquiry-side event: invalid → dead letter; Redis or broker trouble → try
        again with backoff until it is handled or the agent is cancelled at shutdown (never
        lost: an event not handled is not acknowledged, and comes again after a restart)."""
        delay_s = 0.2
        while True:
            if service.desk is None or service.producer is None:
                await asyncio.sleep(delay_s)
                continue
            try:
                await handler(service.desk, event.value)
                return
            except InvalidEvent as exc:
                await send_deadletter(service.producer, s, event.message, exc, RouterEngine.service)
                return
            except Exception:
                log.exception("%s failed; trying again in %.1f s", what, delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(10.0, delay_s * 2)

    inquiries = app.topic(s.topics.inquiries, value_serializer="raw", key_serializer="raw")
    resolved = app.topic(s.topics.resolved, value_serializer="raw", key_serializer="raw")

    @app.agent(inquiries)
    async def handle_inquiries(stream: Any) -> None:
        async for event in stream.events():
            await handle(event, "inquiry", InquiryDesk.on_received)

    @app.agent(resolved)
    async def handle_resolutions(stream: Any) -> None:
        async for event in stream.events():
            await handle(event, "resolution", InquiryDesk.on_resolved)

    return app, service
