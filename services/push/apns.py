"""Push to iOS through APNs (HTTP/2, token-based authentication).

Auth: the team's `.p8` signing key signs an ES256 provider token (`iss` = team id, `iat`,
header `kid` = key id), reused for `token_refresh_s` (Apple refuses one older than an hour
and more than one new token every 20 minutes); a 403 `ExpiredProviderToken` makes a new one
and the send is tried once more.

Send: `POST {base}/3/device/{token}` over HTTP/2 with `authorization: bearer <token>`,
`apns-topic` (the app's bundle id), `apns-push-type: alert`, `apns-priority` (10 for high and
urgent, else 5) and `{"aps": {"alert": {"title", "body"}}, ...}`. 200 → delivered (the
`apns-id` header is the provider message id). `BadDeviceToken`, `DeviceTokenNotForTopic`
(400) and `Unregistered` (410) → rejected and the token marked dead for the customer
(shared/push_tokens.py); 429 `TooManyRequests` (too many to that one device) → RetryLater
for this attempt only; 500/503 → RetryLater, holding every send for the delay; the rest →
failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.channel.http_provider import (
    DEFAULT_RETRY_AFTER_S,
    RetryAfterGate,
    RetryLater,
    parse_retry_after,
    read_secret,
)
from shared.channel.provider import Completed, Message, Provider, ProviderContext, SendResult
from shared.contract.models import Dispatch
from shared.errors import ConfigError
from shared.push_tokens import DEAD_TOKEN_TTL_S, known_dead, reject_dead

log = logging.getLogger(__name__)

DEAD_REASONS = {
    "BadDeviceToken": "invalid token",
    "DeviceTokenNotForTopic": "token of another app",
    "Unregistered": "unregistered token",
    "ExpiredToken": "unregistered token",
}


class ApnsSettings(BaseSettings):
    """`TONGDA_APNS_*`: the signing key (a mounted .p8 file), its ids, the app's bundle id."""

    model_config = SettingsConfigDict(env_prefix="TONGDA_APNS_", frozen=True, extra="ignore")

    key_file: Path | None = None  # the .p8 signing key, mounted from a Secret
    key: SecretStr = SecretStr("")  # or its PEM text
    key_id: str = ""
    team_id: str = ""
    topic: str = ""  # the app's bundle id
    base_url: str = "https://api.push.apple.com"  # development: https://api.sandbox.push.apple.com
    request_timeout_s: float = 10.0
    token_refresh_s: float = 3000.0  # between 20 and 60 minutes
    dead_token_ttl_s: int = DEAD_TOKEN_TTL_S

    def signing_key(self) -> EllipticCurvePrivateKey:
        """The ES256 key; ConfigError naming what is wrong, never quoting the key."""
        for name in ("key_id", "team_id", "topic"):
            if not getattr(self, name):
                raise ConfigError(f"TONGDA_APNS_{name.upper()} is not set")
        pem = read_secret(self.key, self.key_file, "TONGDA_APNS_KEY_FILE (or TONGDA_APNS_KEY)")
        try:
            key = load_pem_private_key(pem.get_secret_value().encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigError("the APNs signing key is not a PEM (.p8) key") from None
        if not isinstance(key, EllipticCurvePrivateKey):
            raise ConfigError("the APNs signing key is not an EC (P-256) key")
        return key


class ProviderTokens:
    """The provider token, renewed every `refresh_s` or when APNs says it expired."""

    def __init__(
        self,
        settings: ApnsSettings,
        key: EllipticCurvePrivateKey,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.key = key
        self.clock = clock
        self.issued = 0
        self._token: str | None = None
        self._made_at = 0.0

    def get(self) -> str:
        """The current provider token, signed anew when it is due."""
        if self._token is None or self.clock() - self._made_at >= self.settings.token_refresh_s:
            self._token = jwt.encode(
                {"iss": self.settings.team_id, "iat": int(time.time())},
                self.key,
                algorithm="ES256",
                headers={"kid": self.settings.key_id},
            )
            self._made_at = self.clock()
            self.issued += 1
        return self._token

    def expired(self, token: str) -> None:
        """APNs called `token` expired: the next get() signs a new one."""
        if self._token == token:
            self._token = None


class ApnsPush(Provider):
    """The `apns` push provider."""

    name = "apns"

    def __init__(self, settings: ApnsSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.gate = RetryAfterGate(clock)
        self._ctx: ProviderContext | None = None
        self._client: httpx.AsyncClient | None = None
        self._tokens: ProviderTokens | None = None

    @property
    def tokens(self) -> ProviderTokens:
        if self._tokens is None:
            raise RuntimeError("apns used before start()")
        return self._tokens

    async def start(self, ctx: ProviderContext) -> None:
        """Load the signing key; open the HTTP/2 client (prior knowledge over http://)."""
        self._tokens = ProviderTokens(self.settings, self.settings.signing_key(), self.clock)
        self._client = httpx.AsyncClient(
            http1=False, http2=True, timeout=self.settings.request_timeout_s
        )
        self._ctx = ctx

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Send one notification; the outcome is known at once."""
        if self._ctx is None or self._client is None:
            raise RuntimeError("apns used before start()")
        ctx, device = self._ctx, dispatch.recipient
        dead = await known_dead(ctx, dispatch)
        if dead is not None:
            return dead
        self.gate.check(self.name)
        url = f"{self.settings.base_url.rstrip('/')}/3/device/{device}"
        body = orjson.dumps(apns_payload(dispatch, message))
        for attempt in (1, 2):
            token = self.tokens.get()
            headers = self._headers(dispatch, token)
            resp = await self._client.post(url, content=body, headers=headers)
            reason = _reason(resp)
            if resp.status_code == 403 and reason == "ExpiredProviderToken" and attempt == 1:
                self.tokens.expired(token)
                continue
            return await self._result(dispatch, resp, reason)
        raise AssertionError("unreachable")

    def _headers(self, dispatch: Dispatch, token: str) -> dict[str, str]:
        urgent = dispatch.priority in ("high", "urgent")
        return {
            "authorization": f"bearer {token}",
            "apns-topic": self.settings.topic,
            "apns-push-type": "alert",
            "apns-priority": "10" if urgent else "5",
            "content-type": "application/json",
        }

    async def _result(self, dispatch: Dispatch, resp: httpx.Response, reason: str) -> SendResult:
        if resp.status_code == 200:
            return Completed("delivered", resp.headers.get("apns-id"), "accepted by APNs")
        if resp.status_code == 429 or resp.status_code >= 500:
            delay = parse_retry_after(resp.headers.get("retry-after")) or DEFAULT_RETRY_AFTER_S
            if resp.status_code >= 500:  # APNs is unwell: hold every send
                self.gate.hold(delay)
            raise RetryLater(f"APNs {reason} (HTTP {resp.status_code})", delay)
        dead = DEAD_REASONS.get(reason)
        if dead is None:
            return Completed("failed", None, f"APNs {reason} (HTTP {resp.status_code})")
        ctx = self._ctx
        assert ctx is not None
        return await reject_dead(ctx, dispatch, dead, self.settings.dead_token_ttl_s)


def apns_payload(dispatch: Dispatch, message: Message) -> dict[str, Any]:
    """The notification: an alert, and the ids as custom keys."""
    return {
        "aps": {"alert": {"title": message.subject, "body": message.body}, "sound": "default"},
        "notification_id": dispatch.notification_id,
        "type": dispatch.type,
    }


def _reason(resp: httpx.Response) -> str:
    """APNs' `reason` from an error body; the status when there is none."""
    if resp.status_code == 200:
        return ""
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        body = None
    reason = body.get("reason") if isinstance(body, dict) else None
    return reason if isinstance(reason, str) else f"HTTP {resp.status_code}"

