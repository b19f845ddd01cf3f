"""Inbound messages from borrowers (SMS and email replies, missed calls, DTMF call-back
requests) → `inquiry.received/v1` on the inquiries topic, for the router to classify.

Every provider that receives something (SMPP `deliver_sm`, a Twilio inbound webhook, a reply
email, the sandbox's `POST /sandbox/inbound`) builds an `Inbound` and awaits the service's
`InboundSink` (ProviderContext.on_inbound). The sink returns once the broker has the record.
The inquiry id is derived from the provider's own message id when there is one, so a
provider that delivers the same inbound message twice produces the same inquiry id (the
router treats the second as a duplicate).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from shared.addresses import address_hash, normalize_address
from shared.config import ChannelSettings
from shared.contract.codec import dumps
from shared.contract.models import InquiryReceived
from shared.masking import mask_address
from shared.metrics import INBOUND_MESSAGES

log = logging.getLogger(__name__)

INQUIRY_NS = uuid.UUID("0c3c1a8e-6f7e-4d6b-9a53-0f4b8d1e2c77")


@dataclass(frozen=True)
class Inbound:
    """One message a borrower sent us on this service's channel."""

    from_: str  # the sender's address as the provider gave it (phone or email)
    text: str  # "" for a missed inbound call
    # when the provider does not say: now on the service's clock (simulated in a demo)
    received_at: datetime | None = None
    provider_message_id: str | None = None  # the provider's id, for deduplication
    in_reply_to: str | None = None  # a notification id, when the provider can tell


InboundSink = Callable[[Inbound], Awaitable[str]]  # returns the inquiry id


class InboundPublisher:
    """Publishes inbound messages as `inquiry.received/v1`, keyed by a keyed hash of the
    sender (the channel service does not know the customer: the router resolves it)."""

    def __init__(
        self,
        settings: ChannelSettings,
        producer: AIOKafkaProducer,
        provider: str,
        redis: Redis | None = None,  # a simulated clock's origin is read from it
    ):
        self.settings = settings
        self.producer = producer
        self.provider = provider
        self.redis = redis
        self._key = settings.address_hash_key.get_secret_value().encode()
        self.clock = settings.clock()

    def inquiry_id(self, inbound: Inbound) -> str:
        """Stable for a provider message id; random otherwise."""
        if inbound.provider_message_id:
            name = f"{self.settings.channel}:{self.provider}:{inbound.provider_message_id}"
            return str(uuid.uuid5(INQUIRY_NS, name))
        return str(uuid.uuid4())

    async def publish(self, inbound: Inbound) -> str:
        """Publish one inbound message and wait until the broker has it; return its id."""
        channel = self.settings.channel
        sender = normalize_address(inbound.from_)
        if inbound.received_at is None and self.redis is not None:
            await self.clock.sync(self.redis, self.settings.key_prefix)
        record = InquiryReceived.model_validate(
            {
                "schema": "inquiry.received/v1",
                "id": self.inquiry_id(inbound),
                "customer_id": None,
                "channel": channel,
                "from": sender,
                "text": inbound.text,
                "received_at": inbound.received_at or self.clock.now(),
                "in_reply_to": inbound.in_reply_to,
            }
        )
        await self.producer.send_and_wait(
            self.settings.topics.inquiries,
            key=address_hash(self._key, sender).encode(),
            value=dumps(record),
        )
        INBOUND_MESSAGES.labels(channel=channel, provider=self.provider).inc()
        log.info(
            "inbound message published",
            extra={"inquiry_id": record.id, "from": mask_address(channel, sender)},
        )
        return record.id
