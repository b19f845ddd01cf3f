"""Inbound provider callbacks, made safe: signature checked, replays ignored, rate-limited.

Every Twilio webhook route (SMS status and inbound, voice status and inbound) is built by
`TwilioWebhooks.route`, which, in this order:

1. rate-limits the route with a token bucket in Redis shared by every replica
   (shared/channel/ratelimit.py): past the limit it answers 429 with `Retry-After` before
   reading the body (Twilio retries; nothing answered 2xx is lost);
2. checks `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, URL + the POST parameters
   sorted by name, each name followed by its value)), over the URL as Twilio called it
   (`TONGDA_TWILIO_PUBLIC_URL` + path and query); missing or wrong → 403, nothing done;
3. claims the callback in Redis (`SET NX` on `<prefix>webhook:seen:<provider>:<sid>:<status>`,
   kept `replay_ttl_s`): a callback already handled answers 200 and does nothing;
4. runs the handler, which publishes (receipt, inquiry) before answering 2xx. If the handler
   fails, the claim is released and the answer is 5xx, so Twilio's retry is handled afresh.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiohttp import web
from redis.asyncio import Redis

from shared.channel.provider import Provider, ProviderContext
from shared.channel.ratelimit import RateLimited, TokenBucket
from shared.channel.twilio import TwilioClient, TwilioSettings
from shared.http import json_error
from shared.metrics import WEBHOOK_CALLBACKS

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Twilio-Signature"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

Params = dict[str, str]
WebhookHandler = Callable[[Params], Awaitable[web.Response]]
# The (sid, status) a callback is deduplicated by.
DedupeKey = Callable[[Params], tuple[str, str]]


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The `X-Twilio-Signature` Twilio computes for a form POST to `url` (a name given
    several times counts each of its distinct values once, as Twilio's libraries do)."""
    data = url + "".join(name + value for name, value in sorted(set(params)))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def valid_twilio_signature(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], signature: str | None
) -> bool:
    """True when `signature` is the one Twilio would send (compared in constant time)."""
    if not signature:
        return False
    expected = twilio_signature(auth_token, url, params)
    return hmac.compare_digest(expected.encode(), signature.encode())


def twiml(body: str = EMPTY_TWIML) -> web.Response:
    """A TwiML answer."""
    return web.Response(text=body, content_type="text/xml")


class ReplayGuard:
    """Remembers callbacks already handled, by provider, provider id and status."""

    def __init__(self, redis: Redis, key_prefix: str, ttl_s: int) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s

    def key(self, provider: str, sid: str, status: str) -> str:
        """The Redis key of one callback."""
        return f"{self.key_prefix}webhook:seen:{provider}:{sid}:{status}"

    async def claim(self, provider: str, sid: str, status: str) -> bool:
        """True the first time; False for a replay."""
        return bool(
            await self.redis.set(self.key(provider, sid, status), b"1", nx=True, ex=self.ttl_s)
        )

    async def release(self, provider: str, sid: str, status: str) -> None:
        """Forget a claim whose handling failed, so the provider's retry is handled."""
        await self.redis.delete(self.key(provider, sid, status))


class TwilioWebhooks:
    """Builds a provider's Twilio webhook routes; `start()` gives them the auth token and Redis."""

    def __init__(self, settings: TwilioSettings, provider: str = "twilio") -> None:
        self.settings = settings
        self.provider = provider
        self._token: str | None = None
        self._guard: ReplayGuard | None = None
        self._redis: Redis | None = None
        self._key_prefix = ""
        self._buckets: dict[str, TokenBucket] = {}

    def start(self, auth_token: str, redis: Redis, key_prefix: str) -> None:
        """Called from the provider's start(): routes answer 503 until then."""
        self._token = auth_token
        self._guard = ReplayGuard(redis, key_prefix, self.settings.replay_ttl_s)
        self._redis, self._key_prefix = redis, key_prefix

    def bucket(self, path: str) -> TokenBucket:
        """The route's rate limit, in Redis, shared by every replica."""
        bucket = self._buckets.get(path)
        if bucket is None:
            if self._redis is None:
                raise RuntimeError("webhooks used before start()")
            bucket = TokenBucket(
                self._redis,
                f"{self._key_prefix}webhook:rate:{self.provider}:{path}",
                self.settings.webhook_rate_per_s,
                self.settings.webhook_burst,
                max_wait_s=0.0,
            )
            self._buckets[path] = bucket
        return bucket

    def signed_url(self, request: web.Request) -> str:
        """The URL Twilio signed: the configured public URL with the request's path and query
        (not the URL as this service sees it behind a load balancer)."""
        return self.settings.callback_url(request.path_qs)

    def status_and_inbound(
        self,
        status_path: str,
        on_status: WebhookHandler,
        inbound_path: str,
        on_inbound: WebhookHandler,
        sid: str,
        status: str,
    ) -> list[web.RouteDef]:
        """The two routes a Twilio resource has: status callbacks (deduplicated by the
        resource's `sid` field and its `status` field) and inbound messages or calls."""
        return [
            self.route(
                status_path, on_status, lambda p: (p[sid], p[status]), required=(sid, status)
            ),
            self.route(
                inbound_path, on_inbound, lambda p: (p[sid], "inbound"), required=(sid, "From")
            ),
        ]

    def route(
        self,
        path: str,
        handler: WebhookHandler,
        dedupe: DedupeKey,
        required: Sequence[str] = (),
    ) -> web.RouteDef:
        """`POST path`, guarded as the module describes."""
        counted = {
            result: WEBHOOK_CALLBACKS.labels(provider=self.provider, route=path, result=result)
            for result in ("handled", "replay", "bad_signature", "rate_limited")
        }

        async def guarded(request: web.Request) -> web.StreamResponse:
            token, guard = self._token, self._guard
            if token is None or guard is None:
                return json_error(503, "not_ready", "the provider is starting")
            try:
                await self.bucket(path).reserve()
            except RateLimited:
                counted["rate_limited"].inc()
                return _too_many(1.0 / self.settings.webhook_rate_per_s)
            pairs = await _form_pairs(request)
            if pairs is None:
                return json_error(400, "malformed_form", "expected a form-encoded body")
            if not valid_twilio_signature(
                token, self.signed_url(request), pairs, request.headers.get(SIGNATURE_HEADER)
            ):
                counted["bad_signature"].inc()
                log.warning("webhook refused: bad or missing signature", extra={"route": path})
                return json_error(403, "forbidden", f"missing or invalid {SIGNATURE_HEADER}")
            params = dict(pairs)
            missing = [name for name in required if not params.get(name)]
            if missing:
                return json_error(400, "invalid_fields", f"missing {', '.join(missing)}")
            key = dedupe(params)
            if not await guard.claim(self.provider, *key):
                counted["replay"].inc()
                log.info("replayed callback ignored", extra={"route": path, "sid": key[0]})
                return twiml()
            try:
                answer = await handler(params)
            except BaseException:
                await guard.release(self.provider, *key)
                raise
            counted["handled"].inc()
            return answer

        return web.post(path, guarded)


def _too_many(wait_s: float) -> web.Response:
    resp = json_error(429, "rate_limited", "too many webhook requests; retry later")
    resp.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    return resp


async def _form_pairs(request: web.Request) -> list[tuple[str, str]] | None:
    """The POST parameters in order, or None when the body is not a plain form."""
    if request.content_type not in ("application/x-www-form-urlencoded", ""):
        return None
    form = await request.post()
    pairs = []
    for name, value in form.items():  # a MultiDictProxy: repeated names come through
        if not isinstance(value, str):
            return None
        pairs.append((name, value))
    return pairs


def int_param(value: str | None) -> int | None:
    """A numeric callback parameter (`ErrorCode`, `SipResponseCode`), None when absent."""
    return int(value) if value and value.isdigit() else None


class TwilioProvider(Provider):
    """What the Twilio-style providers (SMS, voice) share: the REST client, the guarded
    webhooks and the service's context. Subclasses send, and handle their callbacks."""

    name = "twilio"

    def __init__(self, settings: TwilioSettings) -> None:
        self.settings = settings
        self.client = TwilioClient(settings, self.name)
        self.webhooks = TwilioWebhooks(settings, self.name)
        self._ctx: ProviderContext | None = None

    @property
    def ctx(self) -> ProviderContext:
        """The context given to `start()`."""
        if self._ctx is None:
            raise RuntimeError(f"{type(self).__name__} used before start()")
        return self._ctx

    def check_settings(self) -> None:
        """Raise ConfigError for settings this provider needs beyond the shared ones."""

    async def start(self, ctx: ProviderContext) -> None:
        """Check the settings, open the HTTP session, arm the webhooks."""
        self.check_settings()
        token = await self.client.start()
        self.webhooks.start(token.get_secret_value(), ctx.redis, ctx.settings.key_prefix)
        self._ctx = ctx

    async def close(self) -> None:
        """Close the HTTP session."""
        await self.client.close()
