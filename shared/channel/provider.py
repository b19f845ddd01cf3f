"""The interface between a channel service and a delivery provider (sandbox, SMTP, SMPP, SIP,
Twilio-style HTTP, FCM).

A provider's `send()` hands one attempt over and answers at once with either `Accepted`
(the provider took it; the canonical outcome comes later as a `Receipt`) or `Completed`
(the outcome is already known, e.g. an HTTP 400 for an invalid number, or FCM's synchronous
answer). An exception from `send()` is a provider or network error: the attempt's outcome is
`failed`. Receipts (SMS DLRs, call results, bounces) are delivered to the `on_receipt`
callback the service passes to `start()`; a provider's webhook handler calls the same callback.
Messages borrowers send us (SMS replies, reply emails, missed inbound calls, a DTMF call-back
request) go to `on_inbound` (shared/channel/inbound.py), which publishes `inquiry.received/v1`.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from aiohttp import web
from redis.asyncio import Redis

from shared.channel.inbound import Inbound, InboundSink
from shared.config import ChannelSettings
from shared.contract.models import Dispatch
from shared.templates import Message

if TYPE_CHECKING:
    from shared.channel.claims import Liveness

__all__ = [
    "Accepted",
    "Completed",
    "Inbound",
    "InboundSink",
    "Message",
    "Provider",
    "ProviderContext",
    "ProviderOutcome",
    "Receipt",
    "ReceiptSink",
    "SendResult",
    "utcnow",
]

ProviderOutcome = Literal[
    "delivered", "busy", "no_answer", "voicemail", "rejected", "bounced", "failed"
]


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Accepted:
    """The provider took the attempt; its outcome arrives later as a `Receipt`."""

    provider_message_id: str


@dataclass(frozen=True)
class Completed:
    """The provider answered with the attempt's final outcome at send time."""

    outcome: ProviderOutcome
    provider_message_id: str | None = None
    detail: str | None = None
    # The provider that answered, when the service's provider is a chain of several
    # (shared/channel/failover.py); None: the service's provider itself.
    provider: str | None = None


SendResult = Accepted | Completed


@dataclass(frozen=True)
class Receipt:
    """A provider's asynchronous report of an accepted attempt's final outcome."""

    provider_message_id: str
    outcome: ProviderOutcome
    detail: str | None = None
    at: datetime = field(default_factory=utcnow)
    provider: str | None = None  # as in Completed: the chain's provider that took the send


# Returns True when the receipt matched an attempt this service knows, False otherwise
# (unknown or already reported id: a webhook handler answers 2xx either way, so the
# provider stops retrying). Raises when the outcome could not be published: retry later.
ReceiptSink = Callable[[Receipt], Awaitable[bool]]


@dataclass(frozen=True)
class ProviderContext:
    """What the service gives a provider when it starts."""

    settings: ChannelSettings
    redis: Redis
    on_receipt: ReceiptSink
    # Borrowers' messages to us (replies, missed calls): published as inquiry.received/v1.
    on_inbound: InboundSink
    # This process's identity and the liveness of the others (None in tests of a provider alone).
    liveness: Liveness | None = None


class Provider(abc.ABC):
    """A channel's delivery provider. One instance per service process."""

    name: str  # reported in outcomes, e.g. "sandbox-sms", "twilio"

    async def start(self, ctx: ProviderContext) -> None:  # noqa: B027 (optional hook)
        """Open connections (HTTP session, SMTP pool, SIP trunk) and keep `ctx`."""

    @abc.abstractmethod
    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Hand one attempt to the provider; raise on a provider or network error."""

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Stop producing receipts and release connections; called once, after draining."""

    def webhook_routes(self) -> Sequence[web.RouteDef]:
        """aiohttp routes for the provider's callbacks (DLRs, call status); none by default."""
        return ()
