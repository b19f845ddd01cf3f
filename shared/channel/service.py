"""One channel service's resources and their start-up and drain, in a fixed order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis

from shared.channel.claims import Claims, Liveness
from shared.channel.inbound import InboundPublisher
from shared.channel.outcomes import OutcomePublisher
from shared.channel.provider import Provider, ProviderContext
from shared.channel.receipts import ReceiptBook
from shared.channel.worker import ChannelWorker
from shared.config import ChannelSettings
from shared.errors import ConfigError
from shared.health import GroupWatch
from shared.kafka import GapGuard, GroupListener, make_consumer, make_producer
from shared.redis import make_redis
from shared.topics import missing_topics

log = logging.getLogger(__name__)


class ChannelService:
    """Redis, the Kafka producer and consumer, the provider and the consume loop."""

    def __init__(self, settings: ChannelSettings, provider: Provider) -> None:
        self.settings = settings
        self.provider = provider
        self.client_id = f"{settings.kafka_client_id}-{settings.channel}"
        self.redis: Redis | None = None
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.receipts: ReceiptBook | None = None
        self.inbound: InboundPublisher | None = None
        self.liveness: Liveness | None = None
        self.worker: ChannelWorker | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.group_watch = GroupWatch(
            f"tongda-{settings.channel}", settings.group, settings.group_stuck_after_s
        )
        self._provider_started = False

    async def start(self) -> None:
        """Check the topics, connect, start the provider, then start consuming."""
        s = self.settings
        topics = [
            s.topics.dispatch(s.channel),
            s.topics.router_inbox,
            s.topics.deadletter,
            s.topics.inquiries,
        ]
        missing = await missing_topics(s, topics)
        if missing:
            raise ConfigError(
                f"topics missing on {s.kafka_bootstrap}: {', '.join(missing)}; "
                "create them with `python -m shared.topics`"
            )
        self.redis = make_redis(s)
        await self.redis.ping()
        self.liveness = Liveness(s, self.redis)
        await self.liveness.start()
        self.producer = make_producer(s, self.client_id)
        await self.producer.start()
        publisher = OutcomePublisher(s, self.producer, self.provider.name)
        self.receipts = ReceiptBook(s, self.redis, publisher)
        self.inbound = InboundPublisher(s, self.producer, self.provider.name, self.redis)
        await self.provider.start(
            ProviderContext(
                s, self.redis, self.receipts.resolve, self.inbound.publish, self.liveness
            )
        )
        self._provider_started = True
        self.consumer = make_consumer(s, s.group, [], self.client_id)
        # every offset of a dispatch topic holds a record: one a fetch skipped is read again
        gaps = GapGuard(self.consumer, [topics[0]], self.client_id, s.kafka_offset_gap_wait_s)
        self.consumer.subscribe([topics[0]], listener=GroupListener(self.group_watch, gaps=gaps))
        self.group_watch.joining()
        await self.consumer.start()
        self.worker = ChannelWorker(
            s,
            self.provider,
            self.consumer,
            self.producer,
            self.redis,
            self.receipts,
            publisher,
            Claims(s, self.redis, self.liveness),
            gaps,
        )
        self.loop_task = asyncio.create_task(self.worker.run(), name=f"{self.client_id}-loop")
        self.loop_task.add_done_callback(_log_loop_end)
        log.info("consuming %s as group %s", topics[0], s.group)

    async def stop(self) -> None:
        """Drain and stop; safe after a partial start. The order (like dramatiq's Worker.stop):

        1. stop fetching: the loop takes no new batch;
        2. wait until every send of the batch in hand is handed to the provider, its
           immediate outcomes published and its offsets committed;
        3. wait for pending receipts and publish their outcomes; steps 2 and 3 share one
           deadline, `drain_timeout_s` (past it, the loop is cancelled: an uncommitted batch
           is fetched again elsewhere and skipped as already sent; attempts still without a
           receipt are ended by the router's step timeout);
        4. commit the offsets handed over and not yet committed;
        5. stop the consumer (its partitions move to the other replicas once its session
           times out; with `kafka_leave_group_on_close` it leaves the group at once);
        6. close the provider: no receipt arrives after this;
        7. flush and stop the producer;
        8. say this process is gone (its heartbeat), close Redis.
        """
        deadline = time.monotonic() + self.settings.drain_timeout_s
        if self.worker is not None and self.receipts is not None:
            log.info("draining", extra={"receipts_pending": len(self.receipts)})
        if self.worker is not None and self.loop_task is not None:
            self.worker.stop_fetching()
            await _wait_or_cancel(self.loop_task, deadline - time.monotonic())
        if self.receipts is not None and self._provider_started:
            left = await self.receipts.wait_idle(max(0.0, deadline - time.monotonic()))
            log.info("drained", extra={"receipts_left": left})
        if self.worker is not None:
            try:
                await self.worker.commit()
            except Exception:
                log.warning("final commit failed; the batch will be skipped as sent", exc_info=True)
        if self.consumer is not None:
            await _quietly(self.consumer.stop(), "consumer stop")
        if self._provider_started:
            await _quietly(self.provider.close(), "provider close")
        if self.producer is not None:
            await _quietly(self.producer.stop(), "producer stop")
        if self.liveness is not None:
            await _quietly(self.liveness.stop(), "heartbeat stop")
        if self.redis is not None:
            # the client owns its pool (shared/redis.py): aclose() closes it (and a
            # RedisCluster's nodes)
            await _quietly(self.redis.aclose(), "redis close")


async def _wait_or_cancel(task: asyncio.Task[None], limit_s: float) -> None:
    """Wait for `task` up to `limit_s`; then cancel it and wait for it to end."""
    done, _ = await asyncio.wait({task}, timeout=max(0.0, limit_s))
    if not done:
        log.warning("consume loop still busy at the drain deadline; cancelling it")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elif not task.cancelled() and task.exception() is not None:
        log.error("consume loop had failed", exc_info=task.exception())


async def _quietly(step: Awaitable[object], what: str) -> None:
    """Await one shutdown step; log its failure and go on with the next."""
    try:
        await step
    except Exception:
        log.warning("%s failed", what, exc_info=True)


def _log_loop_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("consume loop crashed", exc_info=task.exception())
