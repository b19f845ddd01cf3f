"""Email providers: the sandbox (the default) and SMTP (`TONGDA_PROVIDER=smtp`)."""

from __future__ import annotations

from services.email.settings import load_smtp_settings
from services.email.smtp import SmtpProvider
from shared.channel.provider import Provider
from shared.channel.sandbox import SandboxProvider, Script
from shared.config import ChannelSettings
from shared.contract.models import Dispatch
from shared.errors import ConfigError

PROVIDERS = ("sandbox", "smtp")


class EmailSandbox(SandboxProvider):
    """Email: local part `bounce` is accepted (SMTP 250) then bounces; the rest is delivered."""

    channel = "email"

    async def script(self, dispatch: Dispatch) -> Script:
        """Choose the outcome from the address's local part."""
        local, at, _ = dispatch.recipient.rpartition("@")
        if not at or not local:
            return Script("rejected", None, "SMTP 501 bad recipient address syntax")
        if local == "bounce":
            return Script("bounced", self.between(0.8, 1.2), "SMTP 550 5.1.1 mailbox unavailable")
        return Script("delivered", self.between(0.2, 0.4), "SMTP 250 accepted, no bounce")


def build_provider(settings: ChannelSettings) -> Provider:
    """The provider `settings.provider` names; SMTP reads its TONGDA_SMTP_* settings."""
    if settings.provider == "sandbox":
        return EmailSandbox()
    if settings.provider == "smtp":
        return SmtpProvider(load_smtp_settings())
    raise ConfigError(
        f"unknown email provider {settings.provider!r} (TONGDA_PROVIDER): "
        f"one of {', '.join(PROVIDERS)}"
    )
