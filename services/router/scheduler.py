"""The durable scheduler: work due later (step timeouts, retries, deferrals, expiry).

Transitions add members to a Redis sorted set scored by due time, in the same Lua call as
the state (one sorted set per customer group, in the group's hash slot). `Scheduler.tick`
claims due members with a lease, publishes a `tongda.timer/v1` event for each to the router
inbox (so the owning partition applies it like any outcome), then releases them. A router
that dies after claiming leaves work that comes due again when the lease ends; a timer event
delivered twice is stale the second time and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import orjson
from aiokafka import AIOKafkaProducer

from services.router.store import Store
from shared.clock import Clock
from shared.config import RouterSettings
from shared.contract.codec import dumps
from shared.contract.models import TimerFired
from shared.metrics import TIMERS_DUE
from shared.signing import Signer

log = logging.getLogger(__name__)


class Scheduler:
    """Due times are (simulated) epoch seconds of the clock (shared/clock.py); the lease is
    real seconds, converted."""

    def __init__(
        self,
        settings: RouterSettings,
        store: Store,
        producer: AIOKafkaProducer,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.clock = clock or settings.clock()
        self.signer = Signer.from_settings(settings)  # the inbox is signed (shared/signing.py)

    async def tick(self) -> int:
        """Publish every piece of work due now; return how many. Each customer group has its
        timers zset (store.py `Keys.group_timers`): they are claimed together, one pipelined
        round trip, at most `scheduler_batch` members of each."""
        await self.clock.sync(self.store.redis, self.store.keys.prefix)
        fired = 0
        limit = self.settings.scheduler_batch
        while True:
            now = self.clock.epoch_s()
            lease_until = now + self.settings.scheduler_lease_s / self.clock.time_scale
            claimed = await self.store.claim_due_groups(now, lease_until, limit)
            if not claimed:
                return fired
            futures = []
            done: dict[int, list[str]] = {}
            for group, due in claimed.items():
                members = done.setdefault(group, [])
                for member, score in due:
                    try:
                        kind, cid, nid, leg, attempt = orjson.loads(member)
                        event = TimerFired(
                            kind=kind,
                            notification_id=nid,
                            customer_id=cid,
                            leg=leg,
                            attempt=attempt,
                            due_at=datetime.fromtimestamp(score, UTC),
                        )
                    except (ValueError, TypeError):
                        log.error("dropping an unreadable scheduler entry")
                        members.append(member)
                        continue
                    key, value = cid.encode(), dumps(event)
                    futures.append(
                        await self.producer.send(
                            self.settings.topics.router_inbox,
                            value=value,
                            key=key,
                            headers=[self.signer.header(key, value)],
                        )
                    )
                    members.append(member)
                    TIMERS_DUE.labels(kind=kind).inc()
            await asyncio.gather(*futures)
            await self.store.release_groups(lease_until, done)
            fired += len(futures)
            if all(len(due) < limit for due in claimed.values()):
                return fired
