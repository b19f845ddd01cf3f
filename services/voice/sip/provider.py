"""The SIP voice provider (`TONGDA_PROVIDER=sip`): each send places a call through the SIP
proxy and answers `Accepted(<Call-ID>)` at once; the call's outcome comes as a Receipt when
it ends. DTMF 2 ("call me back") also becomes an inquiry.received/v1 (docs/providers-voice.md).
"""

from __future__ import annotations

import asyncio
import logging
import re

from services.voice.sip.call import CallResult, SipCall
from services.voice.sip.settings import SipSettings
from services.voice.sip.transport import SipEndpoint
from services.voice.sip.tts import Tts
from shared.channel.provider import (
    Accepted,
    Completed,
    Inbound,
    Message,
    Provider,
    ProviderContext,
    Receipt,
    SendResult,
)
from shared.contract.models import Dispatch
from shared.masking import mask_phone

log = logging.getLogger(__name__)

# The text of the inquiry a DTMF 2 produces; the router classifies it as callback_request.
CALLBACK_TEXT = "DTMF 2: call back requested"
_E164 = re.compile(r"\+?[1-9]\d{6,14}")


class SipProvider(Provider):
    """Outbound calls over SIP (UDP) with the message spoken by espeak-ng over RTP."""

    name = "sip"

    def __init__(self, settings: SipSettings, tts: Tts | None = None) -> None:
        self.settings = settings
        self.tts = tts or Tts(settings)
        self.endpoint: SipEndpoint | None = None
        self._ctx: ProviderContext | None = None
        self._slots = asyncio.Semaphore(settings.max_calls)
        self._calls: set[asyncio.Task[None]] = set()
        self.results: dict[str, CallResult] = {}  # the last calls' results, by Call-ID
        self.active = 0

    async def start(self, ctx: ProviderContext) -> None:
        """Bind the SIP socket."""
        s = self.settings
        self._ctx = ctx
        self.endpoint = await SipEndpoint.open(
            (s.proxy_host, s.proxy_port), s.local_host, s.local_port, s.advertised_host
        )
        log.info(
            "SIP provider ready",
            extra={"proxy": f"{s.proxy_host}:{s.proxy_port}", "sip_port": self.endpoint.port},
        )

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Render the message, start the call, answer Accepted(Call-ID)."""
        if self.endpoint is None or self._ctx is None:
            raise RuntimeError("SipProvider used before start()")
        number = dispatch.recipient
        if not _E164.fullmatch(number):
            return Completed("rejected", None, "not a phone number (E.164)")
        pcm = await self.tts.render(message.body, dispatch.locale)
        call = SipCall(self.endpoint, self.settings, number, pcm)
        task = asyncio.create_task(self._run(call, dispatch), name=f"sip-call-{call.call_id}")
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return Accepted(call.call_id)

    async def _run(self, call: SipCall, dispatch: Dispatch) -> None:
        assert self._ctx is not None
        masked = mask_phone(dispatch.recipient)
        try:
            async with self._slots:
                self.active += 1
                try:
                    result = await call.run()
                finally:
                    self.active -= 1
        except asyncio.CancelledError:
            result = CallResult("failed", "the service stopped during the call")
        except Exception as exc:
            log.exception("call failed", extra={"call_id": call.call_id, "to": masked})
            result = CallResult("failed", f"call error: {type(exc).__name__}")
        self.results[call.call_id] = result
        while len(self.results) > 1000:
            self.results.pop(next(iter(self.results)))
        log.info(
            "call ended",
            extra={
                "call_id": call.call_id,
                "to": masked,
                "outcome": result.outcome,
                "detail": result.detail,
            },
        )
        try:
            if result.digit == "2":
                await self._ctx.on_inbound(
                    Inbound(
                        from_=dispatch.recipient,
                        text=CALLBACK_TEXT,
                        provider_message_id=f"{call.call_id}:dtmf2",
                        in_reply_to=dispatch.notification_id,
                    )
                )
            await self._ctx.on_receipt(Receipt(call.call_id, result.outcome, result.detail))
        except Exception:
            log.exception("call outcome not reported", extra={"call_id": call.call_id})

    async def close(self) -> None:
        """Hang up the calls still running, then close the socket."""
        for task in list(self._calls):
            task.cancel()
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=5.0)
        if self.endpoint is not None:
            self.endpoint.close()
