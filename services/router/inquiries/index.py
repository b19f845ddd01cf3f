"""The sender index: which customer a phone number or email belongs to, built from
`customers.profiles` by the engine (every profile change; erased with the tombstone).

Key names carry a keyed hash of the normalised address (shared/addresses.py), never the
address. A number on two profiles belongs to the one written last; a profile that drops an
address removes it from the index only if it still points to that customer.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from services.router.store import Keys
from shared.addresses import address_hash
from shared.contract.models import CustomerProfile
from shared.resp import execute, pack


def profile_addresses(profile: CustomerProfile) -> list[str]:
    """The borrower's own addresses an inbound message may come from."""
    found = [profile.phone, *profile.alt_phones, profile.email]
    return [a for a in found if a]


class SenderIndex:
    def __init__(self, redis: Redis, keys: Keys, hash_key: bytes) -> None:
        self.redis = redis
        self.keys = keys
        self.hash_key = hash_key

    def hash(self, address: str) -> str:
        return address_hash(self.hash_key, address)

    async def customer(self, address: str) -> str | None:
        raw = await self.redis.get(self.keys.sender(self.hash(address)))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def update(self, profiles: Sequence[tuple[str, CustomerProfile | None]]) -> None:
        """Index each profile's addresses (None: a tombstone, remove the customer's and
        whatever tongda keeps of its inquiries). Three round trips per call."""
        if not profiles:
            return
        k = self.keys
        latest = dict(profiles)  # the last profile of a customer in the batch counts
        cids = list(latest)
        reads = [pack("SMEMBERS", k.customer_senders(c)) for c in cids]
        reads += [pack("SMEMBERS", k.customer_inquiries(c)) for c in cids if latest[c] is None]
        replies = await execute(self.redis, reads)
        olds = {c: {h.decode() for h in r} for c, r in zip(cids, replies, strict=False)}
        inquiries = iter(replies[len(cids) :])
        new: dict[str, set[str]] = {}
        stale: list[tuple[str, str]] = []
        writes: list[bytes] = []
        for cid in cids:
            profile = latest[cid]
            new[cid] = {self.hash(a) for a in profile_addresses(profile)} if profile else set()
            stale += [(cid, h) for h in olds[cid] - new[cid]]
            if profile is None:  # erase the customer's inquiries and pending surveys
                ids = [i.decode() for i in next(inquiries)]
                writes += [pack("DEL", k.inquiry(i)) for i in ids]
                if ids:
                    writes.append(pack("ZREM", k.inquiry_timers, *ids))
                writes += [pack("DEL", k.survey(h)) for h in olds[cid]]
                writes.append(pack("DEL", k.customer_inquiries(cid)))
        owners = await execute(self.redis, [pack("GET", k.sender(h)) for _, h in stale])
        for (cid, h), owner in zip(stale, owners, strict=True):
            if owner == cid.encode():
                writes.append(pack("DEL", k.sender(h)))
        for cid, hashes in new.items():
            writes.append(pack("DEL", k.customer_senders(cid)))
            if hashes:
                writes.append(pack("SADD", k.customer_senders(cid), *sorted(hashes)))
                writes += [pack("SET", k.sender(h), cid) for h in sorted(hashes)]
        for reply in await execute(self.redis, writes):
            if isinstance(reply, Exception):
                raise reply
