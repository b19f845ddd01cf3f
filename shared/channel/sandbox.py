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
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from shared.channel.provider import (
    Accepted,
    Completed,
    Inbound,
    Message,
    Provider,
    ProviderContext,
    ProviderOutcome,
    Receipt,
    SendResult,
)
from shared.contract.models import Channel, Dispatch
from shared.http import json_error

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
    # POST /sandbox/inbound: a borrower's message (sms, email) or missed call (voice).
    accepts_inbound: bool = True
    inbound_text_required: bool = True  # voice: a missed call has no text

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

    def webhook_routes(self) -> Sequence[web.RouteDef]:
        """`POST /sandbox/inbound` where the channel takes inbound messages (contract)."""
        return [web.post("/sandbox/inbound", self.inbound)] if self.accepts_inbound else []

    async def inbound(self, request: web.Request) -> web.Response:
        """`{"from": ..., "text": ...}` → inquiry.received/v1, as a provider's webhook would."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return json_error(400, "malformed_json", str(exc))
        if not isinstance(body, dict):
            return json_error(400, "malformed_json", "body must be a JSON object")
        sender, text = body.get("from"), body.get("text", "")
        if not isinstance(sender, str) or not sender.strip() or len(sender) > 320:
            return json_error(
                400, "invalid_fields", "from: a phone or email is required", field="from"
            )
        if not isinstance(text, str) or len(text) > 10_000:
            return json_error(
                400, "invalid_fields", "text: a string of at most 10,000 characters", field="text"
            )
        if self.inbound_text_required and not text.strip():
            return json_error(400, "invalid_fields", "text: must not be empty", field="text")
        inquiry_id = await self.ctx.on_inbound(Inbound(from_=sender, text=text))
        return web.json_response({"inquiry_id": inquiry_id}, status=202)

    async def close(self) -> None:
        """Drop the receipts not yet reported."""
        pending = list(self._receipts)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("%d sandbox receipts dropped at close", len(pending))
