"""The receipt book on the real Redis: a receipt that arrives while its attempt is being
accepted is published, never parked as "early" for good."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from shared.channel.outcomes import AttemptRef
from shared.channel.provider import Receipt
from shared.channel.receipts import ReceiptBook
from shared.config import ChannelSettings

pytest_plugins = ["channel_support"]


class Recorder:
    """Stands in for the outcome publisher: records what would go to the router's inbox."""

    provider = "test"

    def __init__(self) -> None:
        self.published: list[tuple[AttemptRef, str]] = []

    async def publish(
        self,
        ref: AttemptRef,
        outcome: str,
        provider_message_id: str | None,
        detail: str | None,
        at: datetime | None = None,
        provider: str | None = None,
    ) -> None:
        self.published.append((ref, outcome))


async def test_a_receipt_racing_its_accept_is_published_once(
    make_settings: Callable[..., ChannelSettings], redis: Redis
) -> None:
    settings = make_settings("sms")
    recorder = Recorder()
    book = ReceiptBook(settings, redis, recorder)  # type: ignore[arg-type]
    ref = AttemptRef("n1", "c1", 0, 1, "+86138****0000", 0.0)
    real_get = redis.get

    async def get_then_accept(key: Any) -> Any:
        value = await real_get(key)  # Redis does not know the attempt yet ...
        await book.accepted("pm-1", ref)  # ... and send() returns meanwhile
        return value

    redis.get = get_then_accept  # type: ignore[method-assign]
    assert await book.resolve(Receipt("pm-1", "delivered")) is True
    redis.get = real_get  # type: ignore[method-assign]
    assert recorder.published == [(ref, "delivered")]
    assert len(book) == 0
    assert await book.wait_idle(0.1) == 0
