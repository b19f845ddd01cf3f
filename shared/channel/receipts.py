"""Attempts the provider accepted and whose receipt is still to come.

Each accepted attempt is kept in memory and, once per batch, in Redis under
`<prefix>receipt:<channel>:<provider_message_id>`, so that a receipt reaching another
replica's webhook, or this service after a restart, still finds its attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from redis.asyncio import Redis

from shared.channel.outcomes import AttemptRef, OutcomePublisher
from shared.channel.provider import Receipt
from shared.config import ChannelSettings
from shared.metrics import IN_FLIGHT, UNMATCHED_RECEIPTS

log = logging.getLogger(__name__)

EARLY_RECEIPTS_MAX = 10_000  # receipts kept in case their send() has not returned yet


class ReceiptBook:
    """Correlates receipts with attempts and publishes their outcomes."""

    def __init__(
        self, settings: ChannelSettings, redis: Redis, publisher: OutcomePublisher
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.publisher = publisher
        self._pending: dict[str, AttemptRef] = {}
        self._early: OrderedDict[str, Receipt] = OrderedDict()
        self._unsaved: set[str] = set()
        self._resolving = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = IN_FLIGHT.labels(channel=settings.channel)

    def __len__(self) -> int:
        return len(self._pending)

    def key(self, provider_message_id: str) -> str:
        """The Redis key correlating `provider_message_id` with its attempt."""
        return f"{self.settings.key_prefix}receipt:{self.settings.channel}:{provider_message_id}"

    async def accepted(self, provider_message_id: str, ref: AttemptRef) -> None:
        """Remember an accepted attempt; publish at once if its receipt came before."""
        self._pending[provider_message_id] = ref
        self._unsaved.add(provider_message_id)
        self._in_flight.inc()
        self._idle.clear()
        early = self._early.pop(provider_message_id, None)
        if early is not None:
            await self.resolve(early)

    async def save(self) -> None:
        """Write the attempts accepted since the last call to Redis, in one round trip."""
        ids = [i for i in self._unsaved if i in self._pending]
        self._unsaved.clear()
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for pmid in ids:
            pipe.set(self.key(pmid), self._pending[pmid].to_json(), ex=self.settings.dedupe_ttl_s)
        try:
            await pipe.execute()
        except BaseException:
            self._unsaved.update(i for i in ids if i in self._pending)
            raise

    async def resolve(self, receipt: Receipt) -> bool:
        """Publish the outcome `receipt` reports; False if it matches no known attempt."""
        pmid = receipt.provider_message_id
        ref = self._pending.pop(pmid, None)
        saved = ref is None or pmid not in self._unsaved
        self._unsaved.discard(pmid)
        if ref is not None:
            self._in_flight.dec()
        self._resolving += 1
        try:
            if ref is None:
                raw = await self.redis.get(self.key(pmid))
                # accepted() may have run while Redis answered: look in memory again before
                # keeping the receipt as early (it would wait for an accept already past).
                ref = self._pending.pop(pmid, None)
                if ref is not None:
                    saved = pmid not in self._unsaved
                    self._unsaved.discard(pmid)
                    self._in_flight.dec()
                elif raw is None:
                    self._keep_early(receipt)
                    return False
                else:
                    ref = AttemptRef.from_json(raw)
            await self.publisher.publish(
                ref, receipt.outcome, pmid, receipt.detail, receipt.at, receipt.provider
            )
            if saved:
                await self.redis.delete(self.key(pmid))
            return True
        finally:
            self._resolving -= 1
            self._update_idle()

    def _keep_early(self, receipt: Receipt) -> None:
        UNMATCHED_RECEIPTS.labels(
            channel=self.settings.channel, provider=self.publisher.provider
        ).inc()
        log.info(
            "receipt for an unknown attempt",
            extra={"provider_message_id": receipt.provider_message_id},
        )
        self._early[receipt.provider_message_id] = receipt
        while len(self._early) > EARLY_RECEIPTS_MAX:
            self._early.popitem(last=False)

    def expire(self) -> int:
        """Forget attempts waiting longer than receipt_timeout_s; return how many."""
        horizon = time.time() - self.settings.receipt_timeout_s
        stale = [pmid for pmid, ref in self._pending.items() if ref.handed_at < horizon]
        for pmid in stale:
            ref = self._pending.pop(pmid)
            self._unsaved.discard(pmid)
            self._in_flight.dec()
            log.warning("no receipt; attempt forgotten", extra={**ref.log_extra()})
        self._update_idle()
        return len(stale)

    async def wait_idle(self, limit_s: float) -> int:
        """Wait up to `limit_s` until no receipt is pending; return how many still are."""
        try:
            await asyncio.wait_for(self._idle.wait(), limit_s)
        except TimeoutError:
            log.warning("drain timed out with %d receipts pending", len(self._pending))
        return len(self._pending)

    def _update_idle(self) -> None:
        if not self._pending and not self._resolving:
            self._idle.set()
        else:
            self._idle.clear()
