"""The base of the sandbox providers: steered by the recipient address, answering with
realistic delays through asynchronous receipts, and recording every send in a Redis ledger.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import random
import uuid
from collections import deque
from dataclasses import dataclass

from shared.channel.provider import (
    Accepted,
    Completed,
    Message,
    Provider,
    ProviderContext,
    ProviderOutcome,
    Receipt,
    SendResult,
)
from shared.contract.models import Channel, Dispatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Script:
    """What the sandbox does with one send: answer at once, or send a receipt after a delay."""

    outcome: ProviderOutcome
    delay_s: float | None  # None: the outcome is the answer to send() itself
    detail: str | None = None


class SandboxProvider(Provider):
    """A channel's sandbox; subclasses choose each send's `Script` from its address."""

    channel: Channel

    def __init__(self, rng: random.Random | None = None) -> None:
        self.name = f"sandbox-{self.channel}"
        self.rng = rng or random.Random()
        self.outbox: deque[tuple[str, Dispatch, Message]] = deque(maxlen=1000)
        self._ctx: ProviderContext | None = None
        self._receipts: set[asyncio.Task[None]] = set()

    @property
    def ctx(self) -> ProviderContext:
        """The context given to `start()`."""
        if self._ctx is None:
            raise RuntimeError(f"{self.name} used before start()")
        return self._ctx

    async def start(self, ctx: ProviderContext) -> None:
        """Keep the service's settings, Redis client and receipt callback."""
        self._ctx = ctx

    @abc.abstractmethod
    async def script(self, dispatch: Dispatch) -> Script:
        """How the sandbox answers this send, chosen from its address."""

    def between(self, low: float, high: float) -> float:
        """A realistic delay in seconds, uniformly drawn."""
        return self.rng.uniform(low, high)

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Record the send in the ledger, then answer or schedule the receipt."""
        settings = self.ctx.settings
        if settings.sandbox_ledger:
            await self.ctx.redis.hincrby(
                f"{settings.key_prefix}sandbox:sends",
                f"{self.channel}:{dispatch.notification_id}:{dispatch.leg}:{dispatch.attempt}",
                1,
            )
        script = await self.script(dispatch)
        pmid = uuid.uuid4().hex
        self.outbox.append((pmid, dispatch, message))
        if script.delay_s is None:
            return Completed(script.outcome, None, script.detail)
        delay = script.delay_s * settings.sandbox_time_scale
        task = asyncio.create_task(self._report(pmid, script, delay), name=f"{self.name}-{pmid}")
        self._receipts.add(task)
        task.add_done_callback(self._receipts.discard)
        return Accepted(pmid)

    async def _report(self, pmid: str, script: Script, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.ctx.on_receipt(Receipt(pmid, script.outcome, script.detail))
        except Exception:
            log.exception("receipt not reported", extra={"provider_message_id": pmid})

    async def close(self) -> None:
        """Drop the receipts not yet reported."""
        pending = list(self._receipts)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("%d sandbox receipts dropped at close", len(pending))
