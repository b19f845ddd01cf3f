"""Voice calls through a Twilio-style Calls API, with call status callbacks and missed calls.

Send: `POST .../Calls.json` (To, From, Twiml `<Say>` of the rendered script in the
dispatch's language, StatusCallback for `completed`, MachineDetection=Enable) → 201 with the
call `sid` → Accepted; a 400 naming an invalid number → rejected; 429/5xx → RetryLater.
The call's end arrives at `/twilio/voice/status` (CallStatus, AnsweredBy); a borrower's call
to our number arrives at `/twilio/voice/inbound` (configure it as the number's "A call comes
in" webhook): it is rejected (the caller hears busy) and becomes a missed-call inquiry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from xml.sax.saxutils import escape, quoteattr

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
from shared.errors import ConfigError

log = logging.getLogger(__name__)

STATUS_PATH = "/twilio/voice/status"
INBOUND_PATH = "/twilio/voice/inbound"
REJECT_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Reject/></Response>'

# 21211 invalid 'To', 21214 'To' cannot be reached, 21217 number not valid, 13224 invalid.
REJECTING_CODES = frozenset({21211, 21214, 21217, 13224})
REJECTING_SIP = frozenset({404, 484, 604})  # unknown or incomplete number
SAY_LANGUAGES = ("en-US", "en-GB", "zh-CN", "zh-HK", "zh-TW")


def say_language(locale: str) -> str:
    """The `<Say language>` for a dispatch locale: exact, else same language, else en-US."""
    if locale in SAY_LANGUAGES:
        return locale
    language = locale.split("-")[0].lower()
    return next((lang for lang in SAY_LANGUAGES if lang.split("-")[0] == language), "en-US")


def call_twiml(text: str, locale: str) -> str:
    """TwiML saying `text` once in the dispatch's language."""
    lang = quoteattr(say_language(locale))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Say language={lang}>{escape(text)}</Say></Response>"
    )


def status_outcome(params: Params) -> tuple[ProviderOutcome, str] | None:
    """The outcome and detail a call status callback reports; None while the call goes on."""
    status = params.get("CallStatus", "")
    answered_by = params.get("AnsweredBy", "")
    code, sip = int_param(params.get("ErrorCode")), int_param(params.get("SipResponseCode"))
    if status == "completed":
        if answered_by.startswith("machine_"):
            return "voicemail", f"answered by a machine ({answered_by})"
        if answered_by == "fax":
            return "rejected", "answered by a fax machine"
        return "delivered", "answered; message played"
    if status == "busy":
        return "busy", "busy"
    if status == "no-answer":
        return "no_answer", "no answer"
    if status == "failed":
        rejected = code in REJECTING_CODES or sip in REJECTING_SIP
        detail = (
            "call failed" + (f" (error {code})" if code else "") + (f" (SIP {sip})" if sip else "")
        )
        return ("rejected" if rejected else "failed"), detail
    if status == "canceled":
        return "failed", "call canceled"
    return None  # queued, initiated, ringing, in-progress


class TwilioVoice(TwilioProvider):
    """The `twilio` voice provider."""

    def check_settings(self) -> None:
        """Calls need a caller id."""
        if not self.settings.from_number:
            raise ConfigError("TONGDA_TWILIO_FROM_NUMBER is not set (the caller id of calls)")

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Place the call; Accepted with its sid, or the outcome of a refusal."""
        form = {
            "To": dispatch.recipient,
            "From": self.settings.from_number,
            "Twiml": call_twiml(message.body, dispatch.locale),
            "StatusCallback": self.settings.callback_url(STATUS_PATH),
            "StatusCallbackEvent": "completed",
            "MachineDetection": "Enable",
        }
        answer = await self.client.create("Calls", form)
        return answer.send_result(REJECTING_CODES)

    def webhook_routes(self) -> Sequence[web.RouteDef]:
        return self.webhooks.status_and_inbound(
            STATUS_PATH, self.on_status, INBOUND_PATH, self.on_inbound, "CallSid", "CallStatus"
        )

    async def on_status(self, params: Params) -> web.Response:
        """A call status callback: a final status becomes the attempt's receipt."""
        result = status_outcome(params)
        if result is not None:
            outcome, detail = result
            await self.ctx.on_receipt(Receipt(params["CallSid"], outcome, f"Twilio: {detail}"))
        return twiml()

    async def on_inbound(self, params: Params) -> web.Response:
        """A borrower calling us: a missed-call inquiry (empty text); the call is rejected."""
        await self.ctx.on_inbound(
            Inbound(from_=params["From"], text="", provider_message_id=params["CallSid"])
        )
        return twiml(REJECT_TWIML)
