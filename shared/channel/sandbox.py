"""The base of the sandbox providers: steered by the recipient address, answering with
realistic delays through asynchronous receipts, and recording every send in a Redis ledger.

The sandbox stands for a provider outside tongda, so two things hold as they would there:

* **its receipts survive the channel service**: each receipt still to come is also kept in
  Redis (`sandbox:receipts:{channel}`, a sorted set by due time, each member naming the process
  that scheduled it). A process that finds receipts of a process that is gone
  (shared/channel/claims.py `Liveness`) takes them over atomically and reports them: a channel
  service SIGKILLed with receipts pending gets them after its restart (or on another replica),
  like webhooks a real provider retries. A receipt whose report fails (the broker down) is
  retried with backoff, as a provider retries a webhook answered 5xx;
* **its bookkeeping never changes an outcome**: the ledger and the receipt schedule are
  written best effort; while Redis cannot be written they are kept in memory and written
  later (`_Books`), logged at a bounded rate. The outcome is the one the address asks for.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from aiohttp import web

from shared.channel.provider import (
    Accepted,
    Completed,
    Inbound,
    Message,
    Provider,
    ProviderContext,
    ProviderOutcome,
    Receipt,
    SendResult,
)
from shared.contract.models import Channel, Dispatch
from shared.health import RateLimitedLog
from shared.http import json_error

log = logging.getLogger(__name__)

RECOVER_EVERY_S = 1.0  # how often receipts of processes gone are looked for
RETRY_MAX_S = 30.0  # a receipt whose report failed is retried after at most this long
BOOKS_MAX = 100_000  # bookkeeping writes kept while Redis is down (oldest dropped beyond)

# Take over one receipt of a process that is gone: replace its member by ours, same due time.
_TAKE_OVER = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
return 1
"""

# Count one send in the ledger once, however often the write is retried: a write Redis
# applied but whose answer was lost (a connection cut by a Redis kill) is written again by
# `_Books`, and must not look like a second send. KEYS: ledger, ids; ARGV: field, send id.
_COUNT_SEND = """
if redis.call('SADD', KEYS[2], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
end
return 1
"""

Op = Callable[[Any], object]  # adds one command to a pipeline


class _Books:
    """Best-effort Redis writes: tried at once; kept and retried while Redis fails.

    Writes are applied in order, each once (under a lock, a flush takes what waits); callers
    arriving during a flush share the next one.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.redis: Any = None
        self._waiting: deque[Op] = deque()
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._errors = RateLimitedLog(log)

    async def write(self, *ops: Op) -> None:
        """Write `ops` in one round trip, after those still waiting; never raise."""
        if len(self._waiting) + len(ops) > BOOKS_MAX:
            self._errors.log(
                logging.ERROR,
                "full",
                "%s: %d ledger writes waiting; dropping more",
                self.name,
                len(self._waiting),
            )
            return
        self._waiting.extend(ops)
        if self._flusher is not None and not self._flusher.done():
            return  # Redis is failing: the flusher writes them when it is back
        if not await self._flush():
            self._flusher = asyncio.create_task(self._retry(), name=f"{self.name}-books")

    async def _flush(self) -> bool:
        async with self._lock:
            ops = list(self._waiting)
            if not ops:
                return True
            pipe = self.redis.pipeline(transaction=False)
            for op in ops:
                op(pipe)
            try:
                await pipe.execute()
            except Exception as exc:
                self._errors.log(
                    logging.WARNING,
                    type(exc).__name__,
                    "%s: ledger not written (%d writes kept, retried): %r",
                    self.name,
                    len(ops),
                    exc,
                )
                return False
            for _ in ops:
                self._waiting.popleft()
            return True

    async def _retry(self) -> None:
        delay = 0.2
        while not await self._flush():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        log.info("%s: ledger written again", self.name)

    async def close(self) -> None:
        """Stop retrying (what still waits is lost with the process)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher


@dataclass(frozen=True)
class Script:
    """What the sandbox does with one send: answer at once, or send a receipt after a delay."""

    outcome: ProviderOutcome
    delay_s: float | None  # None: the outcome is the answer to send() itself
    detail: str | None = None


class SandboxProvider(Provider):
    """A channel's sandbox; subclasses choose each send's `Script` from its address."""

    channel: Channel
    # POST /sandbox/inbound: a borrower's message (sms, email) or missed call (voice).
    accepts_inbound: bool = True
    inbound_text_required: bool = True  # voice: a missed call has no text

    def __init__(self, rng: random.Random | None = None) -> None:
        self.name = f"sandbox-{self.channel}"
        self.rng = rng or random.Random()
        self.outbox: deque[tuple[str, Dispatch, Message]] = deque(maxlen=1000)
        self._ctx: ProviderContext | None = None
        self._receipts: set[asyncio.Task[None]] = set()
        self._books = _Books(self.name)
        self._instance = uuid.uuid4().hex[:16]  # replaced by the service's, when given
        self._recovery: asyncio.Task[None] | None = None
        self._report_errors = RateLimitedLog(log)

    @property
    def ctx(self) -> ProviderContext:
        """The context given to `start()`."""
        if self._ctx is None:
            raise RuntimeError(f"{self.name} used before start()")
        return self._ctx

    async def start(self, ctx: ProviderContext) -> None:
        """Keep the service's settings, Redis client and receipt callback; with the service's
        liveness, take over the receipts of processes that are gone, every second."""
        self._ctx = ctx
        self._books.redis = ctx.redis
        self._take_over = ctx.redis.register_script(_TAKE_OVER)
        if ctx.liveness is not None:
            self._instance = ctx.liveness.instance
            self._recovery = asyncio.create_task(self._recover(), name=f"{self.name}-recovery")

    @property
    def receipts_key(self) -> str:
        """The sorted set of receipts still to come (member → due time, epoch s)."""
        return f"{self.ctx.settings.key_prefix}sandbox:receipts:{self.channel}"

    @abc.abstractmethod
    async def script(self, dispatch: Dispatch) -> Script:
        """How the sandbox answers this send, chosen from its address."""

    def between(self, low: float, high: float) -> float:
        """A realistic delay in seconds, uniformly drawn."""
        return self.rng.uniform(low, high)

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Record the send in the ledger, then answer or schedule the receipt."""
        settings = self.ctx.settings
        script = await self.script(dispatch)
        pmid = uuid.uuid4().hex
        self.outbox.append((pmid, dispatch, message))
        ops: list[Op] = []
        if settings.sandbox_ledger:
            field = f"{self.channel}:{dispatch.notification_id}:{dispatch.leg}:{dispatch.attempt}"
            ledger = f"{settings.key_prefix}sandbox:sends"
            ids = f"{{{ledger}}}:ids"  # the ledger's hash slot, for Redis Cluster
            ops.append(lambda pipe: pipe.eval(_COUNT_SEND, 2, ledger, ids, field, pmid))
        if script.delay_s is None:
            await self._books.write(*ops)
            return Completed(script.outcome, None, script.detail)
        delay = script.delay_s * settings.sandbox_time_scale
        member = orjson.dumps(
            {"i": self._instance, "p": pmid, "o": script.outcome, "d": script.detail}
        )
        key, due = self.receipts_key, time.time() + delay
        ops.append(lambda pipe: pipe.zadd(key, {member: due}))
        await self._books.write(*ops)
        self._schedule(member, pmid, script.outcome, script.detail, delay)
        return Accepted(pmid)

    def _schedule(
        self, member: bytes, pmid: str, outcome: ProviderOutcome, detail: str | None, delay: float
    ) -> None:
        task = asyncio.create_task(
            self._report(member, pmid, outcome, detail, delay),
            name=f"{self.name}-{pmid}",
        )
        self._receipts.add(task)
        task.add_done_callback(self._receipts.discard)

    async def _report(
        self, member: bytes, pmid: str, outcome: ProviderOutcome, detail: str | None, delay: float
    ) -> None:
        """Report the receipt after `delay`, retrying until the service takes it, then
        forget it in Redis."""
        await asyncio.sleep(delay)
        receipt = Receipt(pmid, outcome, detail)
        retry = 0.5
        while True:
            try:
                await self.ctx.on_receipt(receipt)
                break
            except Exception as exc:  # not published: retried, as a provider retries a webhook
                self._report_errors.log(
                    logging.WARNING,
                    type(exc).__name__,
                    "receipt not taken by the service (its outcome could not be published); "
                    "retrying in %.1f s: %r",
                    retry,
                    exc,
                )
                await asyncio.sleep(retry)
                retry = min(retry * 2, RETRY_MAX_S)
        key = self.receipts_key
        await self._books.write(lambda pipe: pipe.zrem(key, member))

    async def _recover(self) -> None:
        """Every second: take over the due receipts of processes that are gone."""
        errors = RateLimitedLog(log)
        while True:
            await asyncio.sleep(RECOVER_EVERY_S)
            try:
                await self.recover()
            except Exception as exc:
                errors.log(
                    logging.WARNING, type(exc).__name__, "sandbox receipts not recovered: %r", exc
                )

    async def recover(self) -> int:
        """Take over the due receipts scheduled by processes that are gone; return how many."""
        liveness = self.ctx.liveness
        if liveness is None:
            return 0
        now = time.time()
        due = await self.ctx.redis.zrangebyscore(
            self.receipts_key, "-inf", now, start=0, num=1000, withscores=True
        )
        items = [(m, orjson.loads(m), float(score)) for m, score in cast(list[Any], due)]
        alive = await liveness.alive({it["i"] for _, it, _ in items})
        taken = 0
        for member, it, score in items:
            if it["i"] in alive:
                continue
            mine = orjson.dumps({**it, "i": self._instance})
            if await self._take_over(keys=[self.receipts_key], args=[member, mine]):
                taken += 1
                self._schedule(mine, it["p"], it["o"], it["d"], max(0.0, score - now))
        if taken:
            log.warning("%d sandbox receipts taken over from a process that is gone", taken)
        return taken

    def webhook_routes(self) -> Sequence[web.RouteDef]:
        """`POST /sandbox/inbound` where the channel takes inbound messages (contract)."""
        return [web.post("/sandbox/inbound", self.inbound)] if self.accepts_inbound else []

    async def inbound(self, request: web.Request) -> web.Response:
        """`{"from": ..., "text": ...}` → inquiry.received/v1, as a provider's webhook would."""
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return json_error(400, "malformed_json", str(exc))
        if not isinstance(body, dict):
            return json_error(400, "malformed_json", "body must be a JSON object")
        sender, text = body.get("from"), body.get("text", "")
        if not isinstance(sender, str) or not sender.strip() or len(sender) > 320:
            return json_error(
                400, "invalid_fields", "from: a phone or email is required", field="from"
            )
        if not isinstance(text, str) or len(text) > 10_000:
            return json_error(
                400, "invalid_fields", "text: a string of at most 10,000 characters", field="text"
            )
        if self.inbound_text_required and not text.strip():
            return json_error(400, "invalid_fields", "text: must not be empty", field="text")
        inquiry_id = await self.ctx.on_inbound(Inbound(from_=sender, text=text))
        return web.json_response({"inquiry_id": inquiry_id}, status=202)

    async def close(self) -> None:
        """Drop the receipts not yet reported (still in Redis: another process takes them
        over once this one's heartbeat is gone)."""
        if self._recovery is not None:
            self._recovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovery
        await self._books.close()
        pending = list(self._receipts)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("%d sandbox receipts dropped at close", len(pending))
