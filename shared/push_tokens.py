"""Push tokens the push service learned are dead (FCM `UNREGISTERED`, an invalid token).

When a push provider rejects a token as unregistered or invalid, the push service records it
under `<prefix>push:dead:<customer_id>:<address_hash(token)>`, with the reason and the time
the attempt that found it was dispatched (the router's clock). The token itself is never a
key name: `address_hash` is a keyed HMAC (shared/addresses.py).

The router skips a customer's dead token when it starts a notification (services/router/
push_filter.py: one MGET per batch) until the profile changes: a profile whose `updated_at`
is later than that dispatch makes the token usable again (the router deletes the mark, so
the push service's `known_dead` check lets it through too). A new token has another hash
and is used at once. A profile without `updated_at` cannot show a change: its dead tokens
stay skipped until the mark expires after `ttl_s` (FCM tokens of uninstalled apps never
come back). The rule covers the tokens of the event's `contacts` as well: they come from the
same app registrations, and the profile's `updated_at` is what says they were renewed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from redis.asyncio import Redis

from shared.addresses import address_hash
from shared.channel.provider import Completed, ProviderContext
from shared.config import CommonSettings
from shared.contract.models import Dispatch
from shared.masking import mask_token

log = logging.getLogger(__name__)

DEAD_TOKEN_TTL_S = 180 * 24 * 3600


def dead_token_key(settings: CommonSettings, customer_id: str, token: str) -> str:
    """The Redis key marking `token` dead for `customer_id`."""
    digest = address_hash(settings.address_hash_key.get_secret_value().encode(), token)
    return f"{settings.key_prefix}push:dead:{customer_id}:{digest}"


@dataclass(frozen=True)
class DeadMark:
    """What a dead-token key holds."""

    found_at: datetime | None  # when the attempt that found it was dispatched; None: unknown
    reason: str

    def encode(self) -> bytes:
        at = self.found_at.isoformat() if self.found_at is not None else None
        return orjson.dumps({"found_at": at, "reason": self.reason})

    @classmethod
    def decode(cls, raw: bytes | str) -> DeadMark:
        """The mark; a value that is not our JSON (an older plain reason) has no time."""
        try:
            obj = orjson.loads(raw)
            at = obj.get("found_at") if isinstance(obj, dict) else None
            found_at = datetime.fromisoformat(at) if isinstance(at, str) else None
            if found_at is not None and found_at.tzinfo is None:
                found_at = found_at.replace(tzinfo=UTC)
            return cls(found_at, str(obj.get("reason", "")) if isinstance(obj, dict) else "")
        except (orjson.JSONDecodeError, ValueError):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            return cls(None, text)

    def revived_by(self, profile_updated_at: datetime | None) -> bool:
        """Did the profile change after the token was found dead?"""
        return (
            self.found_at is not None
            and profile_updated_at is not None
            and profile_updated_at > self.found_at
        )


async def mark_token_dead(
    redis: Redis,
    settings: CommonSettings,
    customer_id: str,
    token: str,
    reason: str,
    ttl_s: int = DEAD_TOKEN_TTL_S,
    found_at: datetime | None = None,
) -> None:
    """Record that `token` must not be used for `customer_id`, found by an attempt
    dispatched at `found_at`."""
    mark = DeadMark(found_at, reason)
    await redis.set(dead_token_key(settings, customer_id, token), mark.encode(), ex=ttl_s)


async def is_token_dead(
    redis: Redis, settings: CommonSettings, customer_id: str, token: str
) -> bool:
    """True when `token` was found dead for `customer_id`."""
    return bool(await redis.exists(dead_token_key(settings, customer_id, token)))


async def known_dead(ctx: ProviderContext, dispatch: Dispatch) -> Completed | None:
    """A push provider's first step: `rejected` at once for a token already found dead."""
    if await is_token_dead(ctx.redis, ctx.settings, dispatch.customer_id, dispatch.recipient):
        return Completed("rejected", None, "unregistered token (known dead)")
    return None


async def reject_dead(
    ctx: ProviderContext, dispatch: Dispatch, reason: str, ttl_s: int = DEAD_TOKEN_TTL_S
) -> Completed:
    """The provider found the attempt's token dead: remember it for the customer, `rejected`."""
    await mark_token_dead(
        ctx.redis,
        ctx.settings,
        dispatch.customer_id,
        dispatch.recipient,
        reason,
        ttl_s,
        found_at=dispatch.dispatched_at,
    )
    log.info(
        "push token dead for the customer",
        extra={"token": mask_token(dispatch.recipient), "reason": reason},
    )
    return Completed("rejected", None, reason)
