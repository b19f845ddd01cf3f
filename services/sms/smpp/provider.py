"""The SMPP 3.4 SMS provider: bound transceiver sessions kept alive, long texts split into
concatenated parts, throughput held under the account's contract, receipts and borrowers'
messages read from deliver_sm.

- `binds` sessions, each rebound with a doubling backoff when it drops or the bind fails;
  a submit in flight on a dropped session fails (the attempt is `failed`, the router retries).
- Each part takes a token from the account's Redis bucket (shared by every replica), then
  waits for a window slot of its session (`window` submit_sm in flight per session).
- ESME_RTHROTTLED / ESME_RMSGQFUL: every replica pauses `throttle_backoff_s` (the bucket),
  and the part is submitted again, within the service's send timeout.
- submit_sm_resp errors: bad destination → `rejected`, anything else → `failed`.
- A long text's attempt is known by the SMSC message_id of its first part; every part's id
  maps to it, and the attempt's receipt is the first part not delivered, or `delivered` once
  every part is (aggregated in Redis, so receipts reaching another replica count too).
- deliver_sm with esm_class 0x04 is a receipt; any other is a borrower's message, published
  through ProviderContext.on_inbound (concatenated parts joined first).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections import OrderedDict
from dataclasses import dataclass

from services.sms.smpp import pdu
from services.sms.smpp.pdu import ShortMessage
from services.sms.smpp.session import BindRefused, IdHandler, SmppSession
from services.sms.smpp.settings import SmppSettings
from services.sms.smpp.text import decode_payload, encode_text, parse_receipt, split_udh
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
from shared.channel.ratelimit import TokenBucket
from shared.contract.models import Dispatch
from shared.masking import mask_phone
from shared.metrics import PROVIDER_SESSIONS, PROVIDER_THROTTLED

log = logging.getLogger(__name__)

REJECTING_STATUSES = {pdu.ESME_RINVDSTADR, pdu.ESME_RINVDSTTON, pdu.ESME_RINVDSTNPI}
THROTTLING_STATUSES = {pdu.ESME_RTHROTTLED, pdu.ESME_RMSGQFUL}

# Receipt `stat:` (SMPP 3.4 Appendix B) → canonical outcome; ENROUTE/ACCEPTD are not final.
RECEIPT_OUTCOMES: dict[str, ProviderOutcome] = {
    "DELIVRD": "delivered",
    "UNDELIV": "failed",  # not proof the number is wrong (phone off too long, roaming)
    "EXPIRED": "failed",
    "DELETED": "failed",
    "UNKNOWN": "failed",
    "REJECTD": "rejected",
}
# message_state TLV (§5.2.28) → its stat word
MESSAGE_STATES = {2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV", 7: "UNKNOWN",
                  8: "REJECTD", 1: "ENROUTE", 6: "ACCEPTD"}  # fmt: skip

MEMORY_PARTS_MAX = 100_000
MO_BUFFER_MAX = 1_000
CLOSE_WAIT_S = 5.0  # for sessions to unbind at close

# KEYS[1]: the group's hash; ARGV: part id, outcome, total parts, ttl. Returns the attempt's
# outcome once known (the first part not delivered, or delivered when all parts are), else nil.
GROUP_LUA = """
if redis.call('HEXISTS', KEYS[1], '~done') == 1 then return false end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[2] ~= 'delivered' then
  redis.call('HSET', KEYS[1], '~done', ARGV[2])
  return ARGV[2]
end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], '~done', 'delivered')
  return 'delivered'
end
return false
"""


class SmppUnavailable(ConnectionError):
    """No session bound to the SMSC within `bind_wait_s`."""


@dataclass(frozen=True)
class Part:
    """A part of a long text: the attempt it belongs to (its first part's id), how many."""

    group: str
    total: int


class SmppProvider(Provider):
    """SMS over SMPP 3.4 to one SMSC account."""

    def __init__(self, settings: SmppSettings, name: str = "smpp") -> None:
        self.name = name
        self.settings = settings
        self._ctx: ProviderContext | None = None
        self.bucket: TokenBucket | None = None
        self.sessions: list[SmppSession] = []
        self._bound = asyncio.Event()
        self._stop = asyncio.Event()
        self._keepers: list[asyncio.Task[None]] = []
        self._next = 0
        self._paused_until = 0.0  # loop time; throttled without a shared bucket
        self.close_wait_s = CLOSE_WAIT_S
        self._parts: OrderedDict[str, Part] = OrderedDict()
        self._mo_parts: OrderedDict[tuple[str, int, int], dict[int, str]] = OrderedDict()

    @property
    def ctx(self) -> ProviderContext:
        if self._ctx is None:
            raise RuntimeError(f"{self.name} used before start()")
        return self._ctx

    def key(self, kind: str, name: str) -> str:
        """A Redis key of this provider's account."""
        account = hashlib.sha256(self.settings.account.encode()).hexdigest()[:16]
        return f"{self.ctx.settings.key_prefix}smpp:{account}:{kind}:{name}"

    async def start(self, ctx: ProviderContext) -> None:
        """Start binding (in the background: the SMSC may be down at start-up)."""
        self._ctx = ctx
        s = self.settings
        if s.rate_per_s > 0:
            self.bucket = TokenBucket(
                ctx.redis,
                self.key("ratelimit", "submit"),
                s.rate_per_s,
                s.rate_burst,
                s.rate_max_wait_s,
            )
        self._group = ctx.redis.register_script(GROUP_LUA)
        self._gauge = PROVIDER_SESSIONS.labels(channel=ctx.settings.channel, provider=self.name)
        self._throttled = PROVIDER_THROTTLED.labels(
            channel=ctx.settings.channel, provider=self.name
        )
        self._keepers = [
            asyncio.create_task(self._keep_bound(i), name=f"{self.name}-bind-{i}")
            for i in range(s.binds)
        ]

    async def wait_bound(self, timeout_s: float) -> None:
        """Wait until at least one session is bound (TimeoutError otherwise)."""
        await asyncio.wait_for(self._bound.wait(), timeout_s)

    async def _keep_bound(self, index: int) -> None:
        s = self.settings
        delay = s.rebind_min_s
        label = f"{self.name}-{index}"
        while not self._stop.is_set():
            session = SmppSession(s, self._on_deliver, label)
            try:
                await session.open()
            except (OSError, TimeoutError, BindRefused) as exc:
                log.warning(
                    "smpp bind failed (%s); again in %.1f s",
                    exc if isinstance(exc, BindRefused) else type(exc).__name__,
                    delay,
                    extra={"session": label, "smsc": s.host, "port": s.port},
                )
                await self._pause(delay)
                delay = min(delay * 2, s.rebind_max_s)
                continue
            except Exception:
                log.exception("smpp bind failed unexpectedly; again in %.1f s", delay)
                await session.abort()
                await self._pause(delay)
                delay = min(delay * 2, s.rebind_max_s)
                continue
            delay = s.rebind_min_s
            self.sessions.append(session)
            self._update_bound()
            stop = asyncio.create_task(self._stop.wait())
            closed = asyncio.create_task(session.closed.wait())
            await asyncio.wait({stop, closed}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            closed.cancel()
            self.sessions.remove(session)
            self._update_bound()
            if self._stop.is_set():
                await session.close()
                return
            await session.abort()
            log.warning("smpp session dropped; rebinding", extra={"session": label})
            await self._pause(s.rebind_min_s * random.uniform(0.5, 1.5))

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the provider is closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _update_bound(self) -> None:
        self._gauge.set(len(self.sessions))
        if self.sessions:
            self._bound.set()
        else:
            self._bound.clear()

    async def _session(self) -> SmppSession:
        """The bound session with the fewest requests in flight (round robin among equals);
        wait up to `bind_wait_s` for one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.bind_wait_s
        while not self.sessions:  # a loop: the session bound may drop before we resume
            try:
                await asyncio.wait_for(self._bound.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise SmppUnavailable(
                    f"no SMPP session bound within {self.settings.bind_wait_s:g} s"
                ) from None
        self._next = (self._next + 1) % len(self.sessions)
        ordered = self.sessions[self._next :] + self.sessions[: self._next]
        return min(ordered, key=lambda session: session.in_flight)

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Submit every part; Accepted with the first part's message_id."""
        s = self.settings
        encoded = encode_text(message.body, random.randrange(256))
        total = len(encoded.parts)
        group: list[str] = []

        def register(message_id: str) -> None:
            # Called as the submit_sm_resp is read, before any receipt that follows it.
            if not group:
                group.append(message_id)
            if total > 1:
                self._remember(message_id, Part(group[0], total))

        for seq, payload in enumerate(encoded.parts, 1):
            sm = ShortMessage(
                source_addr=s.source_addr,
                source_addr_ton=s.source_ton,
                source_addr_npi=s.source_npi,
                destination_addr=dispatch.recipient.lstrip("+"),
                dest_addr_ton=s.dest_ton,
                dest_addr_npi=s.dest_npi,
                esm_class=encoded.esm_class,
                data_coding=encoded.data_coding,
                registered_delivery=s.registered_delivery,
                short_message=payload,
            )
            resp = await self._submit(sm, register)
            where = f" (part {seq}/{total})" if total > 1 else ""
            if resp.status != pdu.ESME_ROK:
                outcome: ProviderOutcome = (
                    "rejected" if resp.status in REJECTING_STATUSES else "failed"
                )
                detail = f"submit_sm refused: {status_name(resp.status)}{where}"
                return Completed(outcome, group[0] if group else None, detail)
            if total > 1:
                await self._save_part(pdu.decode_id(resp.body), Part(group[0], total))
        return Accepted(group[0])

    async def _submit(self, sm: ShortMessage, register: IdHandler) -> pdu.Pdu:
        """One part: a token, a window slot, submit_sm; again after throttling."""
        while True:
            if self.bucket is not None:
                await self.bucket.acquire()
            else:
                hold = self._paused_until - asyncio.get_running_loop().time()
                if hold > 0:
                    await asyncio.sleep(hold)
            session = await self._session()
            resp = await session.submit(sm, register)
            if resp.status not in THROTTLING_STATUSES:
                return resp
            self._throttled.inc()
            log.info("smpp throttled (%s); pausing", status_name(resp.status))
            if self.bucket is not None:
                await self.bucket.pause(self.settings.throttle_backoff_s)
            else:  # no shared bucket: hold this replica's submits
                loop = asyncio.get_running_loop()
                self._paused_until = loop.time() + self.settings.throttle_backoff_s

    def _remember(self, message_id: str, part: Part) -> None:
        self._parts[message_id] = part
        while len(self._parts) > MEMORY_PARTS_MAX:
            self._parts.popitem(last=False)

    async def _save_part(self, message_id: str, part: Part) -> None:
        """A part's id → its attempt, in Redis at once: its receipt may reach another
        replica's session (this replica knows it from `register`)."""
        value = f"{part.group}|{part.total}"
        try:
            await self.ctx.redis.set(
                self.key("part", message_id), value, ex=self.settings.parts_ttl_s
            )
        except Exception:  # the part is out: failing the send now would send it again
            log.warning("part id not saved; only this replica knows it", exc_info=True)

    async def _part(self, message_id: str) -> Part | None:
        part = self._parts.get(message_id)
        if part is not None:
            return part
        raw = await self.ctx.redis.get(self.key("part", message_id))
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        group, _, total = text.rpartition("|")
        return Part(group, int(total))

    async def _on_deliver(self, sm: ShortMessage) -> None:
        """A receipt or a borrower's message; raising makes the SMSC deliver it again."""
        if sm.esm_class & 0x3C == pdu.ESM_DELIVERY_RECEIPT:
            await self._on_receipt(sm)
        elif sm.esm_class & 0x3C == 0:
            await self._on_mo(sm)
        else:
            log.info("deliver_sm of esm_class 0x%02x ignored", sm.esm_class)

    async def _on_receipt(self, sm: ShortMessage) -> None:
        fields = parse_receipt(sm.payload.decode("latin-1"))
        message_id = sm.tlvs.get(pdu.TLV_RECEIPTED_MESSAGE_ID, b"").rstrip(b"\x00").decode(
            "latin-1"
        ) or fields.get("id", "")
        state = sm.tlvs.get(pdu.TLV_MESSAGE_STATE)
        stat = MESSAGE_STATES.get(state[0], "") if state else fields.get("stat", "")
        outcome = RECEIPT_OUTCOMES.get(stat.upper())
        if not message_id or outcome is None:
            log.info("receipt not final or without id ignored", extra={"stat": stat})
            return
        detail = f"DLR stat:{stat} err:{fields.get('err', '-')}"
        part = await self._part(message_id)
        if part is not None:
            final = await self._group(
                keys=[self.key("group", part.group)],
                args=[message_id, outcome, part.total, self.settings.parts_ttl_s],
            )
            if final is None:
                return
            if final in (b"delivered", "delivered"):
                outcome = "delivered"
            message_id = part.group
            detail = f"{detail} ({part.total} parts)"
        await self.ctx.on_receipt(Receipt(message_id, outcome, detail))

    async def _on_mo(self, sm: ShortMessage) -> None:
        payload = sm.payload
        sender = sm.source_addr
        if sm.source_addr_ton == 1 and not sender.startswith("+"):
            sender = f"+{sender}"
        concat = None
        if sm.esm_class & pdu.ESM_UDHI:
            concat, payload = split_udh(payload)
        text = decode_payload(sm.data_coding, payload)
        if concat is not None and concat.total > 1:
            key = (sender, concat.ref, concat.total)
            got = self._mo_parts.setdefault(key, {})
            got[concat.seq] = text
            while len(self._mo_parts) > MO_BUFFER_MAX:
                self._mo_parts.popitem(last=False)
            if len(got) < concat.total:
                return
            del self._mo_parts[key]
            text = "".join(got[i] for i in sorted(got))
        log.info("smpp inbound message", extra={"from": mask_phone(sender)})
        await self.ctx.on_inbound(Inbound(from_=sender, text=text))

    async def close(self) -> None:
        """Unbind every session and stop rebinding."""
        self._stop.set()
        if not self._keepers:
            return
        # a keeper in the middle of a bind to an unresponsive SMSC is not waited for
        _, binding = await asyncio.wait(self._keepers, timeout=self.close_wait_s)
        for keeper in binding:
            keeper.cancel()
        await asyncio.gather(*self._keepers, return_exceptions=True)


def status_name(status: int) -> str:
    """`ESME_RTHROTTLED (0x58)`, or the hex value for a status this module does not name."""
    for name, value in vars(pdu).items():
        if name.startswith("ESME_") and value == status:
            return f"{name} (0x{status:02x})"
    return f"0x{status:08x}"
