"""The router's core, wired one way for production and tests: store, outbox, state machine
with its contact policy, batch engine and scheduler, over one Redis client and one producer."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.router.engine import RouterEngine
from services.router.inquiries import InquiryDesk
from services.router.intents import Classifier
from services.router.machine import Machine
from services.router.outbox import Outbox
from services.router.plans import PlanBook
from services.router.policy import ContactPolicy
from services.router.scheduler import Scheduler
from services.router.store import Store
from shared.config import RouterSettings
from shared.contract.models import CHANNELS


@dataclass
class RouterCore:
    store: Store
    outbox: Outbox
    machine: Machine
    engine: RouterEngine
    scheduler: Scheduler
    desk: InquiryDesk


async def build_core(
    settings: RouterSettings,
    plans: PlanBook,
    policy: ContactPolicy,
    redis: Redis,
    producer: AIOKafkaProducer,
    classifier: Classifier | None = None,
) -> RouterCore:
    """Everything between the consumer and Redis/Kafka; loads the Lua scripts.
    `classifier`: the intent rules (None: load `settings.intents_path` or the shipped ones)."""
    s = settings
    clock = s.clock()
    await clock.sync(redis, s.key_prefix)  # a simulated clock's origin, once the stack is up
    store = Store(
        redis,
        s.key_prefix,
        s.retention_s,
        s.timeline_max_records,
        policy.caps.horizon_s,
        groups=s.redis_key_groups,
    )
    await store.load_scripts()
    t = s.topics
    outputs = [t.status, t.audit] + [t.dispatch(c) for c in CHANNELS]
    outbox = Outbox(redis, producer, store.keys, s, outputs, store.meter)
    machine = Machine(plans, policy, clock.at_least_real(0.0, s.min_real_timeout_s))
    engine = RouterEngine(s, redis, store, outbox, machine, clock)
    desk = InquiryDesk(
        s,
        redis,
        store,
        producer,
        classifier or Classifier.from_file(s.intents_path),
        policy.config.hardship_hold,
        clock,
    )
    return RouterCore(store, outbox, machine, engine, Scheduler(s, store, producer, clock), desk)
