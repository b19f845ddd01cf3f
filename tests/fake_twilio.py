"""A channel service whose Twilio provider talks to the local Twilio server of
tools/peers/twilio.py (the same one `make demo PROVIDERS=local` runs), for the Twilio tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from channel_support import create_topics, serving
from pydantic import SecretStr

from services.sms.twilio import TwilioSms
from services.voice.twilio import TwilioVoice
from shared.channel.app import create_app
from shared.channel.twilio import TwilioSettings
from shared.config import ChannelSettings
from tools.devstack import free_port
from tools.peers.twilio import FakeTwilio


@asynccontextmanager
async def twilio_service(
    settings: ChannelSettings, provider: type[TwilioSms | TwilioVoice], **twilio: Any
) -> AsyncIterator[tuple[FakeTwilio, TwilioSettings, str]]:
    """The fake Twilio and a channel service using `provider` against it, both serving;
    yields the fake, the provider's settings and the service's URL."""
    fake = FakeTwilio(account_sid="AC" + uuid.uuid4().hex, auth_token=uuid.uuid4().hex)
    base = await fake.start(free_port())
    service_url = f"http://127.0.0.1:{settings.http_port}"
    values: dict[str, Any] = {
        "account_sid": fake.account_sid,
        "auth_token": SecretStr(fake.auth_token),
        "base_url": base,
        "from_number": "+15005550006",
        "public_url": service_url,
        **twilio,
    }
    twilio_settings = TwilioSettings(**values)
    await create_topics(settings)
    try:
        async with serving(create_app(settings, provider(twilio_settings)), settings.http_port):
            yield fake, twilio_settings, service_url
    finally:
        await fake.close()
