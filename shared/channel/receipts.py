"""Attempts the provider accepted and whose receipt is still to come.

Each accepted attempt is kept in memory and saved at once in Redis under
`<prefix>receipt:<channel>:<provider_message_id>` (concurrent accepts share one round trip),
together with its claim turning to "sent" (shared/channel/claims.py; one transaction, or on
Redis Cluster the receipt first, then the claim: `_save_on_cluster`), so that a receipt
reaching another replica's webhook, or this service after a restart (SIGKILL included), still
finds its attempt, and the attempt is never taken for an orphan.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from redis.asyncio import Redis, RedisCluster

from shared.channel.claims import SENT, claim_key
from shared.channel.outcomes import AttemptRef, OutcomePublisher
from shared.channel.provider import Receipt
from shared.config import ChannelSettings
from shared.health import RateLimitedLog
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
        self._save_lock = asyncio.Lock()
        self._errors = RateLimitedLog(log)

    def __len__(self) -> int:
        return len(self._pending)

    def key(self, provider_message_id: str) -> str:
        """The Redis key correlating `provider_message_id` with its attempt."""
        return f"{self.settings.key_prefix}receipt:{self.settings.channel}:{provider_message_id}"

    def claim_key(self, ref: AttemptRef) -> str:
        """The claim of `ref`'s attempt."""
        return claim_key(self.settings, ref.notification_id, ref.leg, ref.attempt)

    async def accepted(self, provider_message_id: str, ref: AttemptRef) -> None:
        """Remember an accepted attempt and save it; publish at once if its receipt came
        before. If Redis cannot be written, the receipt still matches here, in memory, and
        the save is tried again with the next one."""
        self._pending[provider_message_id] = ref
        self._unsaved.add(provider_message_id)
        self._in_flight.inc()
        self._idle.clear()
        early = self._early.pop(provider_message_id, None)
        if early is not None:
            await self.resolve(early)
            return
        try:
            await self.save()
        except Exception as exc:
            self._errors.log(
                logging.WARNING,
                f"save {type(exc).__name__}",
                "pending receipts not saved to Redis (kept in memory, saved later): %r",
                exc,
            )

    async def save(self) -> None:
        """Write the attempts accepted and not saved yet to Redis, each with its claim turned
        "sent", in one transaction. Callers arriving while a save runs share the next one."""
        async with self._save_lock:
            ids = [i for i in self._unsaved if i in self._pending]
            self._unsaved.clear()
            if not ids:
                return
            try:
                if isinstance(self.redis, RedisCluster):
                    await self._save_on_cluster(ids)
                else:
                    pipe = self.redis.pipeline(transaction=True)
                    for pmid in ids:
                        ref = self._pending[pmid]
                        pipe.set(self.key(pmid), ref.to_json(), ex=self.settings.dedupe_ttl_s)
                        pipe.set(self.claim_key(ref), SENT, xx=True, keepttl=True)
                    await pipe.execute()
            except BaseException:
                self._unsaved.update(i for i in ids if i in self._pending)
                raise

    async def _save_on_cluster(self, ids: list[str]) -> None:
        """On Redis Cluster a receipt key and its claim are in two hash slots, which one
        transaction cannot span: the receipts are written first, then the claims turned
        "sent". Stopped in between, an attempt's claim is as it would be had the process
        stopped before the save (claims.py: a redelivered dispatch is taken over as an
        orphan, not sent again by this process), and its receipt, saved, is still matched
        when it comes."""
        pipe = self.redis.pipeline(transaction=False)
        for pmid in ids:
            ref = self._pending[pmid]
            pipe.set(self.key(pmid), ref.to_json(), ex=self.settings.dedupe_ttl_s)
        await pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for pmid in ids:
            pipe.set(self.claim_key(self._pending[pmid]), SENT, xx=True, keepttl=True)
        await pipe.execute()

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
            await self._clean_up(pmid, ref, saved)
            return True
        finally:
            self._resolving -= 1
            self._update_idle()

    async def _clean_up(self, pmid: str, ref: AttemptRef, saved: bool) -> None:
        """After the outcome is published: forget the saved receipt key (or, never saved,
        mark the claim sent). A failure here loses nothing: the outcome is out; a receipt
        key left behind expires after dedupe_ttl_s (a repeated receipt would be published
        again and the router would ignore it as stale)."""
        try:
            if saved:
                await self.redis.delete(self.key(pmid))
            else:
                await self.redis.set(self.claim_key(ref), SENT, xx=True, keepttl=True)
        except Exception as exc:
            self._errors.log(
                logging.WARNING,
                f"clean-up {type(exc).__name__}",
                "outcome of %s/%d/%d published; clean-up of its receipt in Redis failed: %r",
                ref.notification_id,
                ref.leg,
                ref.attempt,
                exc,
            )

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
