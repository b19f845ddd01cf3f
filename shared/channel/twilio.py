"""The Twilio-style REST client shared by the SMS and voice providers.

Twilio's REST API (version 2010-04-01) takes form-encoded POSTs under
`{base_url}/2010-04-01/Accounts/{AccountSid}/`, authenticated with HTTP basic auth (the
account SID and its auth token), and answers JSON: the created resource (201) or an error
`{"code": 21211, "message": ..., "more_info": ..., "status": 400}`. The same auth token signs
the webhooks Twilio sends us (shared/channel/webhooks.py). `base_url` is configurable so that
tests, and Twilio-compatible providers, can stand in for api.twilio.com.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.channel.http_provider import (
    DEFAULT_RETRY_AFTER_S,
    RetryAfterGate,
    RetryLater,
    parse_retry_after,
    read_secret,
)
from shared.channel.provider import Accepted, Completed, ProviderOutcome, SendResult
from shared.errors import ConfigError
from shared.masking import scrub

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"


class TwilioSettings(BaseSettings):
    """`TONGDA_TWILIO_*`: the account, the numbers we send from, and the webhooks' public URL.

    The SMS and voice services read the same names; each runs with its own environment, so
    they may use different numbers (or accounts)."""

    model_config = SettingsConfigDict(env_prefix="TONGDA_TWILIO_", frozen=True, extra="ignore")

    account_sid: str = ""
    auth_token: SecretStr = SecretStr("")
    auth_token_file: Path | None = None  # a mounted secret; wins over auth_token
    base_url: str = "https://api.twilio.com"
    from_number: str = ""  # E.164 sender; or messaging_service_sid (SMS)
    messaging_service_sid: str = ""
    # The scheme and host (and any path prefix) Twilio calls our webhooks at, e.g.
    # https://sms.tongda.example.com: behind a load balancer or ingress the URL this service
    # sees differs, and the signature covers the URL Twilio used. Required.
    public_url: str = ""
    request_timeout_s: float = 10.0
    webhook_rate_per_s: float = Field(50.0, gt=0)  # each webhook route, all replicas (Redis)
    webhook_burst: int = Field(100, ge=1)
    replay_ttl_s: int = 7 * 24 * 3600  # how long a callback already handled is remembered

    def token(self) -> SecretStr:
        """The auth token, from its file when one is mounted; ConfigError when missing."""
        return read_secret(self.auth_token, self.auth_token_file, "TONGDA_TWILIO_AUTH_TOKEN")

    def check(self) -> SecretStr:
        """Validate what every Twilio provider needs; return the auth token."""
        if not self.account_sid:
            raise ConfigError("TONGDA_TWILIO_ACCOUNT_SID is not set")
        if not self.public_url:
            raise ConfigError("TONGDA_TWILIO_PUBLIC_URL is not set (callbacks need it)")
        if not (self.from_number or self.messaging_service_sid):
            raise ConfigError(
                "set TONGDA_TWILIO_FROM_NUMBER or TONGDA_TWILIO_MESSAGING_SERVICE_SID"
            )
        return self.token()

    def callback_url(self, path: str) -> str:
        """The absolute URL of one of our webhook routes as Twilio calls it."""
        return f"{self.public_url.rstrip('/')}{path}"


@dataclass(frozen=True)
class TwilioAnswer:
    """One answer of the REST API: its status and JSON body."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def code(self) -> int | None:
        """Twilio's error code (e.g. 21211), if the answer is an error."""
        code = self.body.get("code")
        return int(code) if isinstance(code, int | str) and str(code).isdigit() else None

    def error_detail(self) -> str:
        """`Twilio 21211: <message>` with any phone number in the message masked."""
        message = scrub(str(self.body.get("message") or "")) or "no message"
        return f"Twilio {self.code or self.status}: {message}"[:300]

    def send_result(self, rejecting_codes: frozenset[int]) -> SendResult:
        """The attempt's result: Accepted with the resource's sid; a 400 with one of
        `rejecting_codes` (the address is invalid for good) rejected; any other error failed."""
        if self.status in (200, 201) and isinstance(self.body.get("sid"), str):
            return Accepted(self.body["sid"])
        outcome: ProviderOutcome = (
            "rejected" if self.status == 400 and self.code in rejecting_codes else "failed"
        )
        return Completed(outcome, None, self.error_detail())


class TwilioClient:
    """Creates resources (Messages, Calls) under the account; one HTTP session per process."""

    def __init__(self, settings: TwilioSettings, provider: str) -> None:
        self.settings = settings
        self.provider = provider
        self.gate = RetryAfterGate()
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> SecretStr:
        """Check the configuration and open the HTTP session; return the auth token."""
        token = self.settings.check()
        self._session = aiohttp.ClientSession(
            headers={
                "Authorization": aiohttp.encode_basic_auth(
                    self.settings.account_sid, token.get_secret_value()
                )
            },
            timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s),
            raise_for_status=False,
        )
        return token

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, resource: str) -> str:
        """`{base}/2010-04-01/Accounts/{sid}/{resource}.json`."""
        base = self.settings.base_url.rstrip("/")
        return f"{base}/{API_VERSION}/Accounts/{self.settings.account_sid}/{resource}.json"

    async def create(self, resource: str, form: dict[str, str]) -> TwilioAnswer:
        """POST one resource; raise RetryLater on 429 and 5xx (honouring Retry-After) and
        while an earlier Retry-After runs. Other answers, errors included, are returned."""
        if self._session is None:
            raise RuntimeError(f"{self.provider} used before start()")
        self.gate.check(self.provider)
        async with self._session.post(self.url(resource), data=form) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = {}
            answer = TwilioAnswer(resp.status, body if isinstance(body, dict) else {})
            if resp.status == 429 or resp.status >= 500:
                delay = parse_retry_after(resp.headers.get("Retry-After"))
                delay = DEFAULT_RETRY_AFTER_S if delay is None else delay
                self.gate.hold(delay)
                raise RetryLater(f"{answer.error_detail()} (HTTP {resp.status})", delay)
            if resp.status in (401, 403):
                log.error(
                    "Twilio refused our credentials",
                    extra={"status": resp.status, "code": answer.code},
                )
            return answer
