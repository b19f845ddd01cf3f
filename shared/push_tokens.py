"""Push tokens the push service learned are dead (FCM `UNREGISTERED`, an invalid token).

When a push provider rejects a token as unregistered or invalid, the push service records it
under `<prefix>push:dead:<customer_id>:<address_hash(token)>`; the router, building a push
leg, skips a customer's token while `is_token_dead` holds. A new token in the profile has
another hash, so it is used at once ("until the profile changes"); the key expires after
`ttl_s` (FCM tokens of uninstalled apps never come back). The token itself is never a key
name: `address_hash` is a keyed HMAC (shared/addresses.py).
"""

from __future__ import annotations

import logging

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


async def mark_token_dead(
    redis: Redis,
    settings: CommonSettings,
    customer_id: str,
    token: str,
    reason: str,
    ttl_s: int = DEAD_TOKEN_TTL_S,
) -> None:
    """Record that `token` must not be used for `customer_id` (value: the reason)."""
    await redis.set(dead_token_key(settings, customer_id, token), reason.encode(), ex=ttl_s)


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
        ctx.redis, ctx.settings, dispatch.customer_id, dispatch.recipient, reason, ttl_s
    )
    log.info(
        "push token dead for the customer",
        extra={"token": mask_token(dispatch.recipient), "reason": reason},
    )
    return Completed("rejected", None, reason)
