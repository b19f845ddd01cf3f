"""SMS providers: the sandbox (default), SMPP and Twilio, alone or as a failover chain."""

from __future__ import annotations

from shared.channel.provider import Provider
from shared.channel.sandbox import SandboxProvider, Script
from shared.config import ChannelSettings
from shared.contract.models import Dispatch
from shared.errors import ConfigError


class SmsSandbox(SandboxProvider):
    """SMS: 0003 is an invalid number (refused at once), 0004 fails, the rest is delivered."""

    channel = "sms"

    async def script(self, dispatch: Dispatch) -> Script:
        """Choose the outcome from the phone number's last four digits."""
        number = dispatch.recipient
        if not number.startswith("+") or not number[1:].isdigit() or number.endswith("0003"):
            return Script("rejected", None, "invalid number")
        if number.endswith("0004"):
            return Script("failed", self.between(0.4, 0.6), "DLR: delivery failed (carrier error)")
        return Script("delivered", self.between(0.3, 0.8), "DLR: delivered")


def build_provider(settings: ChannelSettings) -> Provider:
    """The provider `settings.provider` names; a comma-separated list (`smpp,twilio`) is a
    failover chain in that order (shared/channel/failover.py, tuned by TONGDA_FAILOVER_*)."""
    names = [n.strip() for n in settings.provider.split(",") if n.strip()]
    if len(set(names)) < len(names):
        raise ConfigError(f"sms provider chain {settings.provider!r} names one twice")
    if len(names) > 1:
        from shared.channel.failover import FailoverProvider, load_failover_settings

        return FailoverProvider([build_one(n) for n in names], load_failover_settings())
    return build_one(names[0] if names else settings.provider)


def build_one(name: str) -> Provider:
    """One provider by name; its own settings come from its TONGDA_<NAME>_* variables."""
    if name == "sandbox":
        return SmsSandbox()
    if name == "smpp":
        from services.sms.smpp.provider import SmppProvider
        from services.sms.smpp.settings import load_smpp_settings

        return SmppProvider(load_smpp_settings())
    if name == "twilio":
        from services.sms.twilio import TwilioSms
        from shared.channel.http_provider import provider_settings
        from shared.channel.twilio import TwilioSettings

        return TwilioSms(provider_settings(TwilioSettings, "TONGDA_TWILIO_"))
    raise ConfigError(f"unknown sms provider {name!r}")
