"""Push providers: the sandbox (default), FCM HTTP v1 and APNs."""

from __future__ import annotations

from shared.channel.provider import Provider
from shared.channel.sandbox import SandboxProvider, Script
from shared.config import ChannelSettings
from shared.contract.models import Dispatch
from shared.errors import ConfigError


class PushSandbox(SandboxProvider):
    """Push: a token starting `invalid` is unregistered (refused at once); the rest delivered."""

    channel = "push"
    accepts_inbound = False  # app messages reach inquiries.received from the app backend

    async def script(self, dispatch: Dispatch) -> Script:
        """Choose the outcome from the device token."""
        if dispatch.recipient.startswith("invalid"):
            return Script("rejected", None, "unregistered token")
        return Script("delivered", self.between(0.15, 0.25), "accepted by the push service")


def build_provider(settings: ChannelSettings) -> Provider:
    """The provider `settings.provider` names."""
    if settings.provider == "sandbox":
        return PushSandbox()
    if settings.provider == "fcm":
        from services.push.fcm import FcmPush, FcmSettings
        from shared.channel.http_provider import provider_settings

        return FcmPush(provider_settings(FcmSettings, "TONGDA_FCM_"))
    if settings.provider == "apns":
        from services.push.apns import ApnsPush, ApnsSettings
        from shared.channel.http_provider import provider_settings

        return ApnsPush(provider_settings(ApnsSettings, "TONGDA_APNS_"))
    raise ConfigError(f"unknown push provider {settings.provider!r}")
