"""Publishing an attempt's canonical outcome to the router's inbox, with its metrics and log."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from shared.channel.provider import ProviderOutcome, utcnow
from shared.config import ChannelSettings
from shared.contract.codec import dumps
from shared.contract.models import AttemptOutcome, Dispatch
from shared.masking import mask_address, scrub
from shared.metrics import PROVIDER_OUTCOMES, PROVIDER_SECONDS
from shared.signing import Signer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttemptRef:
    """What the service keeps of an attempt handed to its provider; the address only masked."""

    notification_id: str
    customer_id: str
    leg: int
    attempt: int
    recipient: str  # masked
    handed_at: float  # epoch seconds, so it stays meaningful in Redis across restarts

    @classmethod
    def of(cls, dispatch: Dispatch) -> AttemptRef:
        """The reference of `dispatch`, handed over now."""
        return cls(
            notification_id=dispatch.notification_id,
            customer_id=dispatch.customer_id,
            leg=dispatch.leg,
            attempt=dispatch.attempt,
            recipient=mask_address(dispatch.channel, dispatch.recipient) or "",
            handed_at=time.time(),
        )

    def to_json(self) -> bytes:
        """Serialise for Redis."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> AttemptRef:
        """Parse what `to_json` wrote."""
        obj: dict[str, Any] = orjson.loads(raw)
        return cls(**obj)

    def log_extra(self) -> dict[str, Any]:
        """Fields identifying the attempt in a log line."""
        return {
            "notification_id": self.notification_id,
            "leg": self.leg,
            "attempt": self.attempt,
            "recipient": self.recipient,
        }


class OutcomePublisher:
    """Sends `tongda.outcome/v1` records to the router inbox, keyed by customer_id."""

    def __init__(
        self, settings: ChannelSettings, producer: AIOKafkaProducer, provider: str
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.provider = provider
        self.signer = Signer.from_settings(settings)

    async def publish(
        self,
        ref: AttemptRef,
        outcome: ProviderOutcome,
        provider_message_id: str | None,
        detail: str | None,
        at: datetime | None = None,
        provider: str | None = None,
    ) -> None:
        """Publish and wait until the broker has it (acks=all). `provider`: the one that
        took the send when the service's provider is a failover chain (default: its name)."""
        channel = self.settings.channel
        provider = provider or self.provider
        record = AttemptOutcome(
            notification_id=ref.notification_id,
            customer_id=ref.customer_id,
            channel=channel,
            leg=ref.leg,
            attempt=ref.attempt,
            outcome=outcome,
            provider=provider,
            provider_message_id=provider_message_id,
            detail=scrub(detail)[:1000] if detail else None,
            at=at or utcnow(),
        )
        key, value = ref.customer_id.encode(), dumps(record)
        await self.producer.send_and_wait(
            self.settings.topics.router_inbox,
            key=key,
            value=value,
            headers=[self.signer.header(key, value)],
        )
        PROVIDER_OUTCOMES.labels(channel=channel, outcome=outcome).inc()
        PROVIDER_SECONDS.labels(channel=channel, provider=provider).observe(
            max(0.0, time.time() - ref.handed_at)
        )
        log.info(
            "attempt %s",
            outcome,
            extra={
                **ref.log_extra(),
                "outcome": outcome,
                "provider_message_id": provider_message_id,
                "detail": record.detail,
            },
        )
