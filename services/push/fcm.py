"""Push through FCM HTTP v1 (`projects.messages.send`), authorised by a service account.

Auth: the service account's key signs an RS256 JWT (iss = client_email, scope
firebase.messaging, aud = token_uri, one hour) exchanged at `token_uri` with grant type
`urn:ietf:params:oauth:grant-type:jwt-bearer` for an access token, cached until its
`expires_in` minus a margin; one exchange at a time, shared by every concurrent send; a 401
from FCM drops it and the send is tried once more with a fresh one.

Send: `POST {base}/v1/projects/{project}/messages:send` `{"message": {"token", "notification",
"data", "android"}}` → 200 `{"name"}` → delivered (FCM's answer is synchronous; the name is
the provider message id). Errors (`error.details[].errorCode` of the FcmError detail):
UNREGISTERED (404), INVALID_ARGUMENT about the token, SENDER_ID_MISMATCH → rejected, and the
token is marked dead for the customer (shared/push_tokens.py); 429 and 5xx → RetryLater with
`Retry-After` honoured; anything else (a payload the API refuses, our own credentials) →
failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
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
from shared.masking import scrub
from shared.push_tokens import DEAD_TOKEN_TTL_S, known_dead, reject_dead

log = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME_S = 3600  # the longest Google accepts
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


class FcmSettings(BaseSettings):
    """`TONGDA_FCM_*`: the service account (a mounted JSON key file), project and endpoints."""

    model_config = SettingsConfigDict(env_prefix="TONGDA_FCM_", frozen=True, extra="ignore")

    service_account_file: Path | None = None  # the JSON key, mounted from a Secret
    service_account_json: SecretStr = SecretStr("")  # or the JSON itself
    project_id: str = ""  # "" → the service account's project_id
    base_url: str = "https://fcm.googleapis.com"
    token_uri: str = ""  # "" → the service account's token_uri
    token_margin_s: float = 300.0  # refresh the access token this long before it expires
    request_timeout_s: float = 10.0
    dead_token_ttl_s: int = DEAD_TOKEN_TTL_S


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a Google service account key file FCM needs."""

    client_email: str
    project_id: str
    token_uri: str
    private_key_id: str
    private_key: RSAPrivateKey = field(repr=False)

    @classmethod
    def from_json(cls, raw: str) -> ServiceAccount:
        """Parse a key file; ConfigError naming the problem, never quoting the file."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ConfigError("the FCM service account is not valid JSON") from None
        fields = ("client_email", "private_key", "token_uri")
        if not isinstance(obj, dict) or any(not isinstance(obj.get(f), str) for f in fields):
            raise ConfigError(f"the FCM service account lacks one of {', '.join(fields)}")
        try:
            key = load_pem_private_key(obj["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigError("the FCM service account's private_key is not a PEM key") from None
        if not isinstance(key, RSAPrivateKey):
            raise ConfigError("the FCM service account's private_key is not an RSA key")
        return cls(
            client_email=obj["client_email"],
            project_id=str(obj.get("project_id") or ""),
            token_uri=obj["token_uri"],
            private_key_id=str(obj.get("private_key_id") or ""),
            private_key=key,
        )

    @classmethod
    def load(cls, settings: FcmSettings) -> ServiceAccount:
        """From the mounted file, else the JSON setting."""
        raw = read_secret(
            settings.service_account_json,
            settings.service_account_file,
            "TONGDA_FCM_SERVICE_ACCOUNT_FILE (or _JSON)",
        )
        return cls.from_json(raw.get_secret_value())


class AccessTokens:
    """OAuth2 access tokens for the service account, cached until shortly before expiry."""

    def __init__(
        self,
        account: ServiceAccount,
        token_uri: str,
        session: aiohttp.ClientSession,
        margin_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.account = account
        self.token_uri = token_uri
        self.session = session
        self.margin_s = margin_s
        self.clock = clock
        self.exchanges = 0
        self._token: str | None = None
        self._valid_until = 0.0
        self._lock = asyncio.Lock()

    def assertion(self) -> str:
        """The signed JWT asking for an access token."""
        now = int(time.time())
        claims = {
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + JWT_LIFETIME_S,
        }
        headers = {"kid": self.account.private_key_id} if self.account.private_key_id else None
        return jwt.encode(claims, self.account.private_key, algorithm="RS256", headers=headers)

    async def get(self) -> str:
        """A valid access token: the cached one, or one exchange for a new one."""
        async with self._lock:
            if self._token is None or self.clock() >= self._valid_until:
                self._token, lifetime = await self._exchange()
                self._valid_until = self.clock() + max(0.0, lifetime - self.margin_s)
            return self._token

    def invalidate(self, token: str) -> None:
        """Drop `token` (FCM refused it), unless it was already replaced."""
        if self._token == token:
            self._token = None

    async def _exchange(self) -> tuple[str, float]:
        self.exchanges += 1
        form = {"grant_type": GRANT_TYPE, "assertion": self.assertion()}
        async with self.session.post(self.token_uri, data=form) as resp:
            body = await _json(resp)
            if resp.status == 200 and isinstance(body.get("access_token"), str):
                return body["access_token"], float(body.get("expires_in") or 3600)
            reason = f"OAuth2 token exchange: HTTP {resp.status} {body.get('error', '')}".strip()
            if resp.status == 429 or resp.status >= 500:
                raise RetryLater(reason, _delay(resp))
            log.error("FCM service account refused", extra={"status": resp.status})
            raise RuntimeError(f"{reason}: {scrub(str(body.get('error_description', '')))}")


class FcmPush(Provider):
    """The `fcm` push provider."""

    name = "fcm"

    def __init__(self, settings: FcmSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.gate = RetryAfterGate(clock)
        self._ctx: ProviderContext | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tokens: AccessTokens | None = None
        self._send_url = ""

    @property
    def tokens(self) -> AccessTokens:
        if self._tokens is None:
            raise RuntimeError("fcm used before start()")
        return self._tokens

    async def start(self, ctx: ProviderContext) -> None:
        """Load the service account, open the HTTP session."""
        account = ServiceAccount.load(self.settings)
        project = self.settings.project_id or account.project_id
        if not project:
            raise ConfigError("TONGDA_FCM_PROJECT_ID is not set and the account names none")
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s)
        )
        self._tokens = AccessTokens(
            account,
            self.settings.token_uri or account.token_uri,
            self._session,
            self.settings.token_margin_s,
            self.clock,
        )
        self._send_url = f"{self.settings.base_url.rstrip('/')}/v1/projects/{project}/messages:send"
        self._ctx = ctx

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Send one notification; the outcome is known at once."""
        if self._ctx is None or self._session is None:
            raise RuntimeError("fcm used before start()")
        ctx = self._ctx
        dead = await known_dead(ctx, dispatch)
        if dead is not None:
            return dead
        self.gate.check(self.name)
        body = orjson.dumps({"message": fcm_message(dispatch, message)})
        for attempt in (1, 2):
            access = await self.tokens.get()
            async with self._session.post(
                self._send_url,
                data=body,
                headers={
                    "Authorization": f"Bearer {access}",
                    "Content-Type": "application/json; charset=UTF-8",
                },
            ) as resp:
                answer = await _json(resp)
                if resp.status == 401 and attempt == 1 and _status(answer) == "UNAUTHENTICATED":
                    self.tokens.invalidate(access)  # expired or revoked early: one retry
                    continue
                return await self._result(dispatch, resp, answer)
        raise AssertionError("unreachable")

    async def _result(
        self, dispatch: Dispatch, resp: aiohttp.ClientResponse, answer: dict[str, Any]
    ) -> SendResult:
        if resp.status == 200:
            return Completed("delivered", str(answer.get("name") or "") or None, "accepted by FCM")
        code = _error_code(answer)
        if resp.status == 429 or resp.status >= 500:
            delay = _delay(resp)
            self.gate.hold(delay)
            raise RetryLater(f"FCM {code or _status(answer)} (HTTP {resp.status})", delay)
        dead = {
            "UNREGISTERED": "unregistered token",
            "SENDER_ID_MISMATCH": "token of another sender",
        }.get(code or "")
        if dead is None and resp.status == 404:
            dead = "unregistered token"
        if dead is None and (code == "INVALID_ARGUMENT" or _token_violation(answer)):
            dead = "invalid token"
        if dead is not None:
            ctx = self._ctx
            assert ctx is not None
            return await reject_dead(ctx, dispatch, dead, self.settings.dead_token_ttl_s)
        message = scrub(str(_error(answer).get("message") or ""))[:200]
        return Completed("failed", None, f"FCM {code or _status(answer)}: {message}")


def fcm_message(dispatch: Dispatch, message: Message) -> dict[str, Any]:
    """The v1 `Message` for one attempt: notification, ids as data, Android priority."""
    urgent = dispatch.priority in ("high", "urgent")
    return {
        "token": dispatch.recipient,
        "notification": {"title": message.subject, "body": message.body},
        "data": {
            "notification_id": dispatch.notification_id,
            "type": dispatch.type,
            "category": dispatch.category,
        },
        "android": {"priority": "HIGH" if urgent else "NORMAL"},
    }


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _delay(resp: aiohttp.ClientResponse) -> float:
    delay = parse_retry_after(resp.headers.get("Retry-After"))
    return DEFAULT_RETRY_AFTER_S if delay is None else delay


def _error(answer: dict[str, Any]) -> dict[str, Any]:
    error = answer.get("error")
    return error if isinstance(error, dict) else {}


def _status(answer: dict[str, Any]) -> str:
    return str(_error(answer).get("status") or "UNKNOWN")


def _details(answer: dict[str, Any]) -> list[dict[str, Any]]:
    details = _error(answer).get("details")
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _error_code(answer: dict[str, Any]) -> str | None:
    """The FcmError detail's errorCode (UNREGISTERED, INVALID_ARGUMENT, ...)."""
    for detail in _details(answer):
        if detail.get("@type") == FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
    return None


def _token_violation(answer: dict[str, Any]) -> bool:
    """A BadRequest detail naming `message.token` as the invalid field."""
    for detail in _details(answer):
        if detail.get("@type") == BAD_REQUEST_TYPE:
            for violation in detail.get("fieldViolations") or []:
                if isinstance(violation, dict) and violation.get("field") == "message.token":
                    return True
    return False
