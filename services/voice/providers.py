"""Voice providers: the sandbox, Twilio-style HTTP, and SIP (services/voice/sip)."""

from __future__ import annotations

import hashlib
from typing import Any

from shared.channel.provider import Provider
from shared.channel.sandbox import SandboxProvider, Script
from shared.config import ChannelSettings
from shared.contract.models import Dispatch
from shared.errors import ConfigError

RING_S = 1.0  # ringing before the line answers or reports busy
RING_TIMEOUT_S = 3.0  # ringing before giving up: no answer
PLAY_S = 1.0  # playing the message once answered


class VoiceSandbox(SandboxProvider):
    """Voice calls steered by the number's last four digits (see docs/CONTRACT.md)."""

    channel = "voice"
    inbound_text_required = False  # POST /sandbox/inbound {"from": ...} is a missed call
    _calls_here: dict[str, int]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._calls_here = {}  # calls counted while Redis could not be written

    async def script(self, dispatch: Dispatch) -> Script:
        """Choose the call's outcome and how long it takes from the number."""
        number = dispatch.recipient
        ring = self.between(0.9, 1.1) * RING_S
        answered = Script("delivered", ring + PLAY_S, "answered; message played")
        if not number.startswith("+") or not number[1:].isdigit() or number.endswith("0003"):
            return Script("rejected", self.between(0.15, 0.25), "SIP 404 unknown number")
        if number.endswith("0001"):
            return Script("busy", ring, "SIP 486 busy here")
        if number.endswith("0002"):
            return Script("no_answer", RING_TIMEOUT_S, "SIP 480 no answer after ring timeout")
        if number.endswith("0004"):
            return answered
        if number.endswith("0005"):
            calls = await self._count_call(dispatch)
            return Script("busy", ring, "SIP 486 busy here") if calls <= 2 else answered
        if number.endswith("0006"):
            return Script("voicemail", self.between(1.8, 2.2), "answering machine detected")
        return answered

    async def _count_call(self, dispatch: Dispatch) -> int:
        """This call's number among the calls to this number for this notification."""
        settings = self.ctx.settings
        key = (
            f"{settings.key_prefix}sandbox:voice:calls:"
            f"{dispatch.notification_id}:{hashlib.sha256(dispatch.recipient.encode()).hexdigest()}"
        )
        pipe = self.ctx.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, settings.dedupe_ttl_s)
        try:
            calls, _ = await pipe.execute()
        except Exception:  # Redis down: count here; the sandbox's books never change outcomes
            calls = self._calls_here[key] = self._calls_here.get(key, 0) + 1
        return int(calls)


def build_provider(settings: ChannelSettings) -> Provider:
    """The provider `settings.provider` names."""
    if settings.provider == "sandbox":
        return VoiceSandbox()
    if settings.provider == "twilio":
        from services.voice.twilio import TwilioVoice
        from shared.channel.http_provider import provider_settings
        from shared.channel.twilio import TwilioSettings

        return TwilioVoice(provider_settings(TwilioSettings, "TONGDA_TWILIO_"))
    if settings.provider == "sip":
        from services.voice.sip.provider import SipProvider
        from services.voice.sip.settings import load_sip_settings

        return SipProvider(load_sip_settings())
    raise ConfigError(f"unknown voice provider {settings.provider!r}")
