"""Each attempt's claim in Redis, and which channel-service processes are alive.

An attempt is claimed (`sent:{notification}:{leg}:{attempt}`, `SET NX`) before the provider
sees it, so a dispatch fetched again never reaches the provider twice. The claim says how far
the attempt got:

* `c:<instance>`: claimed by that process; the provider has not answered yet (or the process
  has not yet recorded the answer);
* `o:<instance>:<outcome JSON>`: the provider answered at once with this outcome, which that
  process is publishing;
* `s`: the provider answered: its receipt is awaited (the receipt key is saved, in the same
  Redis transaction) or its outcome is published. (`1`, written by older versions, means the
  same.)

A dispatch fetched again finds the claim and, by its value: `s` → already sent, skipped;
`c:`/`o:` of this very process → this process handles it (its outcome is published or
pending in memory); of a live other process → that process handles it (waited for,
bounded); of a process that is gone → an **orphan**, taken over atomically: an `o:` claim's
outcome is published (the same outcome again, if the kill came after its publishing); a `c:`
claim (killed between the claim and recording the provider's answer) is reported `failed` at
once, saying that whether the provider got it is unknown (the router's plan then retries it
or moves on), instead of waiting for the router's step timeout. docs/reliability.md explains
the choice.

Liveness: each process refreshes `alive:{channel}:{instance}` every second (TTL 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis, RedisCluster

from shared.channel.provider import Completed
from shared.config import ChannelSettings
from shared.contract.models import Dispatch
from shared.health import RateLimitedLog
from shared.masking import mask_address
from shared.redis import RedisMeter

log = logging.getLogger(__name__)

BEAT_EVERY_S = 1.0
ALIVE_TTL_S = 5  # a process not heard of for this long is gone
CLAIMED = "c:"
ANSWERED = "o:"
SENT = b"s"
ORPHAN_DETAIL = (
    "the channel service stopped between claiming this attempt and recording the provider's "
    "answer: whether the provider got it is unknown"
)

# Take over a claim only if it still names the process found gone (another replica may have).
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""


def claim_key(settings: ChannelSettings, notification_id: str, leg: int, attempt: int) -> str:
    """The Redis key claiming one attempt."""
    return f"{settings.key_prefix}sent:{notification_id}:{leg}:{attempt}"


def dispatch_claim_key(settings: ChannelSettings, dispatch: Dispatch) -> str:
    """The claim key of `dispatch`'s attempt."""
    return claim_key(settings, dispatch.notification_id, dispatch.leg, dispatch.attempt)


class Liveness:
    """This process's identity and heartbeat, and the liveness of other processes."""

    def __init__(self, settings: ChannelSettings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        # the service's Redis round trips (tongda_redis_*): the heartbeat keeps redis_up fresh
        self.meter = RedisMeter(f"tongda-{settings.channel}")
        self.instance = uuid.uuid4().hex[:16]
        self._task: asyncio.Task[None] | None = None
        self._errors = RateLimitedLog(log)

    def key(self, instance: str) -> str:
        """The heartbeat key of `instance`."""
        return f"{self.settings.key_prefix}alive:{self.settings.channel}:{instance}"

    async def start(self) -> None:
        """Announce this process, then keep announcing it every second."""
        await self.redis.set(self.key(self.instance), b"1", ex=ALIVE_TTL_S)
        self._task = asyncio.create_task(self._beat(), name=f"alive-{self.instance}")

    async def stop(self) -> None:
        """Stop the heartbeat and say this process is gone (so others take over at once)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.redis.delete(self.key(self.instance))

    async def alive(self, instances: Iterable[str]) -> set[str]:
        """Which of `instances` are alive (this one always is)."""
        others = sorted(set(instances) - {self.instance})
        found = {self.instance} if self.instance in set(instances) else set()
        if others:
            pipe = self.redis.pipeline(transaction=False)
            for i in others:
                pipe.exists(self.key(i))
            found.update(i for i, n in zip(others, await pipe.execute(), strict=True) if n)
        return found

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(BEAT_EVERY_S)
            try:
                beat = self.redis.set(self.key(self.instance), b"1", ex=ALIVE_TTL_S)
                await self.meter.timed("heartbeat", beat)
            except Exception as exc:
                self._errors.log(
                    logging.WARNING, type(exc).__name__, "heartbeat not written: %r", exc
                )


@dataclass(frozen=True)
class ClaimResult:
    """What claiming a batch's attempts found."""

    fresh: list[Dispatch]  # claimed now: to be sent
    # taken over from a process that is gone, each with the outcome to report: the provider's
    # answer if it was recorded (`o:`), else `failed`, whether it was sent being unknown
    orphans: list[tuple[Dispatch, Completed]]
    mine: list[Dispatch]  # already claimed by this process: it knows their fate
    done: list[Dispatch]  # already sent (the provider answered): skipped


class Claims:
    """Claims attempts before they are sent and records that the provider answered."""

    def __init__(self, settings: ChannelSettings, redis: Redis, liveness: Liveness) -> None:
        self.settings = settings
        self.redis = redis
        self.liveness = liveness
        self.mark = CLAIMED + liveness.instance
        self._take_over = redis.register_script(_TAKE_OVER)

    async def claim(self, dispatches: list[Dispatch]) -> ClaimResult:
        """Claim every attempt with one pipelined `SET NX`; sort those already claimed."""
        result = ClaimResult([], [], [], [])
        if not dispatches:
            return result
        keys = [dispatch_claim_key(self.settings, d) for d in dispatches]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, self.mark.encode(), nx=True, ex=self.settings.dedupe_ttl_s)
        claimed = await self.liveness.meter.timed("claim", pipe.execute())
        taken = [(d, k) for d, k, ok in zip(dispatches, keys, claimed, strict=True) if not ok]
        result.fresh.extend(d for d, ok in zip(dispatches, claimed, strict=True) if ok)
        if taken:
            await self._sort_taken(taken, result)
        return result

    async def _sort_taken(self, taken: list[tuple[Dispatch, str]], result: ClaimResult) -> None:
        """Sort attempts claimed before: sent, this process's, a live process's, orphans."""
        deadline = time.monotonic() + ALIVE_TTL_S + self.settings.send_timeout_s + 1
        while taken:
            names = [k for _, k in taken]
            values = await (
                # on Redis Cluster the claims are in several hash slots: one MGET per slot
                self.redis.mget_nonatomic(names)
                if isinstance(self.redis, RedisCluster)
                else self.redis.mget(names)
            )
            held: dict[str, list[tuple[Dispatch, str, str]]] = {}
            for (d, k), raw in zip(taken, values, strict=True):
                value = raw.decode() if isinstance(raw, bytes) else raw
                owner = _owner(value)
                if owner is None:
                    # sent (`s`, or `1` from older versions), or expired meanwhile
                    log.info(
                        "attempt already sent (the provider answered before); not sent again",
                        extra=log_fields(d),
                    )
                    result.done.append(d)
                elif owner == self.liveness.instance:
                    log.info(
                        "attempt already handled by this process; not sent again",
                        extra=log_fields(d),
                    )
                    result.mine.append(d)
                else:
                    held.setdefault(owner, []).append((d, k, value or ""))
            alive = await self.liveness.alive(held)
            taken = []
            for instance, items in held.items():
                if instance in alive:
                    taken.extend((d, k) for d, k, _ in items)
                    continue
                for d, k, value in items:
                    await self._adopt(d, k, value, instance, result)
            if taken:
                if time.monotonic() >= deadline:
                    for d, _ in taken:
                        log.warning(
                            "attempt still claimed by a live channel process; left to it",
                            extra=log_fields(d),
                        )
                    return
                await asyncio.sleep(0.5)  # a live process finishing its send, or dying

    async def _adopt(
        self, d: Dispatch, key: str, value: str, instance: str, result: ClaimResult
    ) -> None:
        """Take over the claim of a process that is gone (unless another process just did)."""
        if value.startswith(ANSWERED):
            payload = value.split(":", 2)[2]
            mine = f"{ANSWERED}{self.liveness.instance}:{payload}"
            if await self._take_over(keys=[key], args=[value, mine]):
                answer = orjson.loads(payload)
                log.warning(
                    "attempt answered by the provider (%s); its outcome was being published by "
                    "a channel process that is gone: publishing it",
                    answer["o"],
                    extra={**log_fields(d), "claimed_by": instance},
                )
                result.orphans.append((d, Completed(answer["o"], answer["p"], answer["d"])))
        elif await self._take_over(keys=[key], args=[value, self.mark]):
            log.warning(
                "attempt claimed by a channel process that is gone before the provider "
                "answered; reporting it failed",
                extra={**log_fields(d), "claimed_by": instance},
            )
            result.orphans.append((d, Completed("failed", None, ORPHAN_DETAIL)))

    async def answered(self, dispatch: Dispatch, result: Completed) -> None:
        """Record the provider's immediate answer before its outcome is published: a process
        taking the attempt over after a crash publishes that answer, not `failed`."""
        answer = {"o": result.outcome, "p": result.provider_message_id, "d": result.detail}
        value = f"{ANSWERED}{self.liveness.instance}:".encode() + orjson.dumps(answer)
        key = dispatch_claim_key(self.settings, dispatch)
        await self.redis.set(key, value, xx=True, keepttl=True)

    async def sent(self, dispatch: Dispatch) -> None:
        """Record that `dispatch`'s outcome is published (it is no orphan if this process dies)."""
        key = dispatch_claim_key(self.settings, dispatch)
        await self.redis.set(key, SENT, xx=True, keepttl=True)


def _owner(value: str | None) -> str | None:
    """The process a claim names; None for a claim whose attempt is sent."""
    if value is None:
        return None
    if value.startswith(CLAIMED):
        return value[len(CLAIMED) :]
    if value.startswith(ANSWERED):
        return value[len(ANSWERED) :].split(":", 1)[0]
    return None


def log_fields(dispatch: Dispatch) -> dict[str, object]:
    """What a log line says of an attempt: ids and the masked recipient, never the address."""
    return {
        "notification_id": dispatch.notification_id,
        "leg": dispatch.leg,
        "attempt": dispatch.attempt,
        "recipient": mask_address(dispatch.channel, dispatch.recipient),
    }
