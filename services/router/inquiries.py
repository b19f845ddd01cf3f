"""Inbound inquiries (low volume, a faust agent): validated and recorded as inbound comms.

Each valid `inquiry.received/v1` becomes an inbound `comms.record/v1` on the audit topic and
in the customer's timeline. Tiered replies and escalation plug in here.
"""

from __future__ import annotations

import hashlib
import uuid

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from services.router.machine import RECORD_NS
from services.router.store import Keys
from shared.config import RouterSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import CommsRecord, InquiryReceived
from shared.masking import mask_address


def inbound_record(inq: InquiryReceived) -> CommsRecord:
    return CommsRecord(
        record_id=str(uuid.uuid5(RECORD_NS, f"inquiry:{inq.id}")),
        inquiry_id=inq.id,
        customer_id=inq.customer_id,
        channel=inq.channel,
        recipient=mask_address(inq.channel, inq.from_),
        direction="inbound",
        decision="received",
        at=inq.received_at,
    )


async def record_inquiry(
    raw: bytes | None, settings: RouterSettings, redis: Redis, producer: AIOKafkaProducer
) -> CommsRecord:
    """Record one inquiry; raises InvalidEvent (→ dead letter) when it is not valid."""
    inq = decode(raw, InquiryReceived)
    record = inbound_record(inq)
    value = dumps(record)
    # Keyed by customer; an unknown sender by a hash of its address (no address in a key).
    key = (inq.customer_id or hashlib.sha256(inq.from_.encode()).hexdigest()).encode()
    if inq.customer_id:
        timeline = Keys(settings.key_prefix).timeline(inq.customer_id)
        pipe = redis.pipeline(transaction=True)
        pipe.lpush(timeline, value)
        pipe.ltrim(timeline, 0, settings.timeline_max_records - 1)
        pipe.expire(timeline, settings.retention_s)
        await pipe.execute()
    await producer.send_and_wait(settings.topics.audit, value=value, key=key)
    return record
