"""SMS through a Twilio-style Messages API, with status callbacks and inbound SMS webhooks.

Send: `POST .../Messages.json` (To, Body, From or MessagingServiceSid, StatusCallback) → 201
with the message `sid` → Accepted; a 400 naming a bad or unsubscribed recipient → rejected;
429/5xx → RetryLater (a `failed` outcome; Retry-After honoured, shared/channel/http_provider.py).
Receipts: Twilio POSTs `MessageStatus` to `/twilio/sms/status`; a borrower's SMS to our number
arrives at `/twilio/sms/inbound` (configure it as the number's "A message comes in" webhook).
Both routes are signed, replay-safe and rate-limited (shared/channel/webhooks.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from aiohttp import web

from shared.channel.provider import (
    Inbound,
    Message,
    ProviderOutcome,
    Receipt,
    SendResult,
)
from shared.channel.webhooks import Params, TwilioProvider, int_param, twiml
from shared.contract.models import Dispatch

log = logging.getLogger(__name__)

STATUS_PATH = "/twilio/sms/status"
INBOUND_PATH = "/twilio/sms/inbound"

# Error codes meaning the recipient cannot take SMS from us: rejected, not worth a retry.
# 21211 invalid 'To' number, 21610 unsubscribed recipient (replied STOP), 21614 not a mobile
# number, 30005 unknown destination handset, 30006 landline or unreachable carrier.
REJECTING_CODES = frozenset({21211, 21610, 21614, 30005, 30006})


def status_outcome(status: str, error_code: int | None) -> ProviderOutcome | None:
    """The outcome a `MessageStatus` reports; None for intermediate statuses."""
    if status in ("delivered", "read"):
        return "delivered"
    if status in ("undelivered", "failed"):
        return "rejected" if error_code in REJECTING_CODES else "failed"
    return None  # queued, accepted, scheduled, sending, sent: more is coming


class TwilioSms(TwilioProvider):
    """The `twilio` SMS provider."""

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Create the message; Accepted with its sid, or the outcome of a refusal."""
        form = {"To": dispatch.recipient, "Body": message.body}
        if self.settings.messaging_service_sid:
            form["MessagingServiceSid"] = self.settings.messaging_service_sid
        else:
            form["From"] = self.settings.from_number
        form["StatusCallback"] = self.settings.callback_url(STATUS_PATH)
        answer = await self.client.create("Messages", form)
        return answer.send_result(REJECTING_CODES)

    def webhook_routes(self) -> Sequence[web.RouteDef]:
        return self.webhooks.status_and_inbound(
            STATUS_PATH,
            self.on_status,
            INBOUND_PATH,
            self.on_inbound,
            "MessageSid",
            "MessageStatus",
        )

    async def on_status(self, params: Params) -> web.Response:
        """A status callback: final statuses become the attempt's receipt."""
        status, code = params["MessageStatus"], int_param(params.get("ErrorCode"))
        outcome = status_outcome(status, code)
        if outcome is not None:
            detail = f"Twilio: {status}" + (f" (error {code})" if code else "")
            await self.ctx.on_receipt(Receipt(params["MessageSid"], outcome, detail))
        return twiml()

    async def on_inbound(self, params: Params) -> web.Response:
        """A borrower's SMS → inquiry.received/v1; answered with empty TwiML (no reply)."""
        await self.ctx.on_inbound(
            Inbound(
                from_=params["From"],
                text=params.get("Body", ""),
                provider_message_id=params["MessageSid"],
            )
        )
        return twiml()
