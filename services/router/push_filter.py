"""The push tokens a new notification may use: those not found dead (shared/push_tokens.py).

`without_dead_tokens()` runs once per batch of requests, before their legs are built: one
pipelined GET per dead-token key of the push tokens that the batch's requests with a push step in
their plan find in their profile or their `contacts` (none: no Redis call at all),
then each request sees its customer's profile (and its own `contacts`) without the tokens
still dead. A mark older than the profile's `updated_at` no longer holds: the profile
changed, the token is usable again, and its mark is deleted (pipelined DELs) so the
push service does not refuse it as known dead either. The stored profile is not changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import msgspec
from aiokafka.structs import TopicPartition

from services.router.messages import Contacts, Request, Requested
from services.router.plans import PlanBook
from services.router.store import Store
from shared.config import CommonSettings
from shared.contract.models import CustomerProfile
from shared.kafka import Record
from shared.push_tokens import DeadMark, dead_token_key
from shared.resp import pack as pack_command

Item = tuple[TopicPartition, Record, Request]
T = TypeVar("T")


def _tokens(
    plans: PlanBook, req: Request, profile: CustomerProfile | None
) -> list[str]:
    plan = plans.get(req.type)
    if plan is None or not any(step.channel == "push" for step in plan.steps):
        return []
    if req.contacts is not None and req.contacts.push_tokens is not None:
        return list(req.contacts.push_tokens)
    return list(profile.push_tokens) if profile is not None else []


async def without_dead_tokens(
    store: Store,
    settings: CommonSettings,
    plans: PlanBook,
    requests: Sequence[Item],
    profiles: dict[str, CustomerProfile | None],
) -> tuple[list[Item], dict[str, CustomerProfile | None]]:
    """The requests and profiles with the tokens found dead left out."""
    pushing = {t for t, plan in plans.plans.items() if any(s.channel == "push" for s in plan.steps)}
    wanted = {
        (req.customer_id, token)
        for _, _, req in requests
        if req.type in pushing  # (the others have no push step: no tokens to check)
        for token in _tokens(plans, req, profiles.get(req.customer_id))
    }
    if not wanted:
        return list(requests), profiles
    pairs = sorted(wanted)
    keys = [dead_token_key(settings, cid, token) for cid, token in pairs]
    # one GET per key (keys of several customers: several hash slots on Redis Cluster)
    raw = await store.run([pack_command("GET", k) for k in keys])
    dead: set[tuple[str, str]] = set()
    revived: list[str] = []
    for pair, key, value in zip(pairs, keys, raw, strict=True):
        if value is None:
            continue
        profile = profiles.get(pair[0])
        if DeadMark.decode(value).revived_by(profile.updated_at if profile else None):
            revived.append(key)
        else:
            dead.add(pair)
    if revived:
        await store.run([pack_command("DEL", k) for k in revived])
    if not dead:
        return list(requests), profiles

    def live(cid: str, tokens: Sequence[str]) -> list[str]:
        return [t for t in tokens if (cid, t) not in dead]

    kept = {
        cid: p.model_copy(update={"push_tokens": live(cid, p.push_tokens)}) if p else None
        for cid, p in profiles.items()
    }
    out: list[Item] = []
    for tp, msg, req in requests:
        c = req.contacts
        if c is not None and c.push_tokens is not None:
            c = _with(c, push_tokens=live(req.customer_id, c.push_tokens))
            req = _with(req, contacts=c)
        out.append((tp, msg, req))
    return out, kept


def _with(value: T, **changes: object) -> T:
    """A copy of a request (or its contacts) with `changes`: the pydantic model's or the
    msgspec mirror's (services/router/messages.py)."""
    if isinstance(value, Requested | Contacts):
        return msgspec.structs.replace(value, **changes)
    return value.model_copy(update=changes)  # type: ignore[attr-defined,no-any-return]
