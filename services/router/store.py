"""The router's Redis layout and its atomic operations (Lua, called by EVALSHA).

Keys (prefix `tongda:` by default):
  n:{notification_id}      the state JSON, which opens with its version `{"v":<n>,`
                           (apply.lua checks it)                   expires after retention
  cn:{customer_id}         set of the customer's notification ids  (for erasure)
  tl:{customer_id}         list of comms.record JSON, newest first (timeline)
  profile:{customer_id}    customer.profile/v1 JSON as last received
  timers                   zset member → due epoch seconds (the durable scheduler)
  outbox:{topic}:{part}    hash effect id → record not yet acknowledged by the broker
  outpos:{topic}:{part}    hash out-topic:partition → offset to scan from on recovery
  led:{customer_id}        zset: the frequency ledger and its version
                           (services/router/ledger.py)
  ctl:{customer_id}        hash: the borrower's own preferences (`pref:<channel>` →
                           `<state>|<epoch s>`) and a hardship hold (`hold` →
                           `<until epoch s>|<inquiry id>`) (services/router/controls.py)
  sx:{address hash}        the customer whose profile lists that phone/email (sender index)
  sxs:{customer_id}        set of the address hashes indexed for the customer
  inq:{inquiry_id}         hash: an inquiry's classification, reply, escalation, resolution
  ciq:{customer_id}        set of the customer's inquiry ids (for erasure)
  svy:{address hash}       the inquiry whose satisfaction survey that sender may answer
  inqtimers                zset: inquiry id → respond_by epoch seconds (SLA timers)

Key names are built here only: the Lua scripts receive every name they touch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from services.router.ledger import VERSION_MEMBER, LedgerView
from services.router.state import NotificationState, decode_state
from shared.redis import RedisMeter
from shared.resp import Arg, Stream, execute, pack

_LUA = Path(__file__).with_name("lua")
_SCRIPTS = ("apply", "read", "erase", "claim", "release", "ledger")


@dataclass(frozen=True)
class Keys:
    prefix: str

    def state(self, notification_id: str) -> str:
        return f"{self.prefix}n:{notification_id}"

    def customer_notifications(self, customer_id: str) -> str:
        return f"{self.prefix}cn:{customer_id}"

    def timeline(self, customer_id: str) -> str:
        return f"{self.prefix}tl:{customer_id}"

    def profile(self, customer_id: str) -> str:
        return f"{self.prefix}profile:{customer_id}"

    @property
    def timers(self) -> str:
        return f"{self.prefix}timers"

    def outbox(self, topic: str, partition: int) -> str:
        return f"{self.prefix}outbox:{topic}:{partition}"

    def outpos(self, topic: str, partition: int) -> str:
        return f"{self.prefix}outpos:{topic}:{partition}"

    def ledger(self, customer_id: str) -> str:
        return f"{self.prefix}led:{customer_id}"

    def controls(self, customer_id: str) -> str:
        return f"{self.prefix}ctl:{customer_id}"

    def sender(self, address_hash: str) -> str:
        return f"{self.prefix}sx:{address_hash}"

    def customer_senders(self, customer_id: str) -> str:
        return f"{self.prefix}sxs:{customer_id}"

    def inquiry(self, inquiry_id: str) -> str:
        return f"{self.prefix}inq:{inquiry_id}"

    def customer_inquiries(self, customer_id: str) -> str:
        return f"{self.prefix}ciq:{customer_id}"

    def survey(self, address_hash: str) -> str:
        return f"{self.prefix}svy:{address_hash}"

    @property
    def inquiry_timers(self) -> str:
        return f"{self.prefix}inqtimers"


class Transition(msgspec.Struct, kw_only=True):
    """Everything one notification's transition writes, applied by apply.lua in one call."""

    notification_id: str
    customer_id: str
    expected_version: int
    state_json: bytes
    outbox_key: str
    outbox: list[tuple[str, bytes]]
    timers_add: list[tuple[str, float]]
    timers_del: list[str]
    timeline: list[bytes]
    # the frequency ledger: the version a decision read (-1: none), and what to write
    ledger_read_version: int = -1
    ledger_add: list[tuple[str, float]] = msgspec.field(default_factory=list)
    ledger_rem: list[str] = msgspec.field(default_factory=list)
    ledger_prune_before: float = 0.0


class Store:
    """Redis operations of the router. Callers pipeline them per batch."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        retention_s: int,
        timeline_max: int,
        ledger_horizon_s: float = 0.0,
        meter: RedisMeter | None = None,
    ) -> None:
        self.redis = redis
        self.meter = meter or RedisMeter("tongda-router")  # times each round trip
        self.keys = Keys(prefix)
        self.retention_s = retention_s
        self.timeline_max = timeline_max
        # how long ledger entries matter (the longest cap window): older ones are pruned
        self.ledger_horizon_s = ledger_horizon_s
        self.ledger_ttl_s = int(ledger_horizon_s) + 86_400
        self._sources = {n: (_LUA / f"{n}.lua").read_text() for n in _SCRIPTS}
        self._sha: dict[str, str] = {}

    async def load_scripts(self) -> None:
        """Load every script (again after a Redis restart lost them: NOSCRIPT)."""
        for name, source in self._sources.items():
            self._sha[name] = str(await self.redis.script_load(source))

    def _call(self, client: Redis, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return client.evalsha(self._sha[name], len(keys), *keys, *args)

    def _packed(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> bytes:
        return pack("EVALSHA", self._sha[name], len(keys), *keys, *args)

    async def run(self, commands: Sequence[bytes], op: str = "write") -> list[Any]:
        """Run packed commands in one round trip (timed as `op`); after a Redis restart lost
        the scripts (NOSCRIPT, which means the script did not run), load them and run those
        again."""
        replies = await self.meter.timed(op, execute(self.redis, commands))
        return await self.settle(commands, replies)

    def stream(self) -> Stream:
        return Stream(self.redis)

    async def settle(self, commands: Sequence[bytes], replies: list[Any]) -> list[Any]:
        """Re-run the commands that met NOSCRIPT; raise the first other error reply."""
        lost = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if lost:
            await self.load_scripts()
            again = await execute(self.redis, [commands[i] for i in lost])
            for i, r in zip(lost, again, strict=True):
                replies[i] = r
        errors = [r for r in replies if isinstance(r, ResponseError)]
        if errors:
            raise errors[0]
        return replies

    def apply(self, chunk: Sequence[Transition]) -> bytes:
        """The packed EVALSHA of apply.lua for a chunk of transitions (one reply: a list of
        1 applied / 0 not at the expected version / 2 the ledger changed, in order).

        Flat arguments (see apply.lua for the layout), written straight as RESP in one pass:
        the hot path's biggest command (`apply_args` lists the same arguments, unpacked)."""
        k = self.keys
        prune = min((t.ledger_prune_before for t in chunk), default=0.0)
        head: list[bytes] = [
            b"EVALSHA",
            self._sha["apply"].encode(),
            b"1",
            k.timers.encode(),
            b"%d" % self.retention_s,
            b"%d" % self.timeline_max,
            b"%d" % self.ledger_ttl_s,
            repr(prune).encode(),
            k.state("").encode(),
            k.customer_notifications("").encode(),
            k.timeline("").encode(),
            k.ledger("").encode(),
            VERSION_MEMBER.encode(),
        ]
        body = bytearray()
        count = len(head)
        ints, scores = _INT_BULKS, _score_bulks()
        for t in chunk:
            nid, cid, sj = t.notification_id.encode(), t.customer_id.encode(), t.state_json
            okey = t.outbox_key.encode()
            ev = t.expected_version
            body += b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
                ints[ev] if 0 <= ev < _INT_TOP else _bulk(b"%d" % ev),
                len(nid),
                nid,
                len(cid),
                cid,
                len(sj),
                sj,
                len(okey),
                okey,
            )
            outbox, tadd, tdel, tl = t.outbox, t.timers_add, t.timers_del, t.timeline
            ladd, lrem = t.ledger_add, t.ledger_rem
            count += 12 + 2 * (len(outbox) + len(tadd) + len(ladd)) + len(tdel) + len(tl)
            count += len(lrem)
            body += _list_bulk(2 * len(outbox))
            for eid, blob in outbox:
                e = eid.encode()
                body += b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(e), e, len(blob), blob)
            body += _list_bulk(2 * len(tadd))
            for member, score in tadd:
                m = member.encode()
                body += scores.get(score) or _score_bulk(scores, score)
                body += b"$%d\r\n%b\r\n" % (len(m), m)
            body += _list_bulk(len(tdel))
            for member in tdel:
                m = member.encode()
                body += b"$%d\r\n%b\r\n" % (len(m), m)
            body += _list_bulk(len(tl))
            for entry in tl:
                body += b"$%d\r\n%b\r\n" % (len(entry), entry)
            lv = t.ledger_read_version
            body += ints[lv] if 0 <= lv < _INT_TOP else _bulk(b"%d" % lv)
            body += _list_bulk(2 * len(ladd))
            for member, score in ladd:
                m = member.encode()
                body += scores.get(score) or _score_bulk(scores, score)
                body += b"$%d\r\n%b\r\n" % (len(m), m)
            body += _list_bulk(len(lrem))
            for member in lrem:
                m = member.encode()
                body += b"$%d\r\n%b\r\n" % (len(m), m)
        return b"*%d\r\n" % count + b"".join([_bulk(a) for a in head]) + body

    def apply_args(self, chunk: Sequence[Transition]) -> list[bytes]:
        """The arguments `apply` packs, as a list (the layout's plain statement; tests check
        that `apply` packs exactly these)."""
        k = self.keys
        prune = min((t.ledger_prune_before for t in chunk), default=0.0)
        args: list[bytes] = [
            b"EVALSHA",
            self._sha["apply"].encode(),
            b"1",
            k.timers.encode(),
            b"%d" % self.retention_s,
            b"%d" % self.timeline_max,
            b"%d" % self.ledger_ttl_s,
            repr(prune).encode(),
            k.state("").encode(),
            k.customer_notifications("").encode(),
            k.timeline("").encode(),
            k.ledger("").encode(),
            VERSION_MEMBER.encode(),
        ]
        add = args.append
        for t in chunk:
            add(b"%d" % t.expected_version)
            add(t.notification_id.encode())
            add(t.customer_id.encode())
            add(t.state_json)
            add(t.outbox_key.encode())
            add(b"%d" % (2 * len(t.outbox)))
            for eid, blob in t.outbox:
                add(eid.encode())
                add(blob)
            add(b"%d" % (2 * len(t.timers_add)))
            for member, score in t.timers_add:
                add(repr(score).encode())
                add(member.encode())
            add(b"%d" % len(t.timers_del))
            args += [m.encode() for m in t.timers_del]
            add(b"%d" % len(t.timeline))
            args += t.timeline
            add(b"%d" % t.ledger_read_version)
            add(b"%d" % (2 * len(t.ledger_add)))
            for member, score in t.ledger_add:
                add(repr(score).encode())
                add(member.encode())
            add(b"%d" % len(t.ledger_rem))
            args += [m.encode() for m in t.ledger_rem]
        return args

    async def read_states(self, ids: Sequence[str]) -> list[NotificationState | None]:
        """The state of each notification (its version is `v`), None where unknown; one
        round trip."""
        if not ids:
            return []
        keys = [self.keys.state(i) for i in ids]
        (raws,) = await self.run([self._packed("read", [], keys)], "read")
        return [decode_state(raw) if raw else None for raw in raws]

    async def read_ledgers(
        self, customer_ids: Sequence[str], now_s: float
    ) -> dict[str, LedgerView]:
        """The frequency ledger of each customer (entries within the horizon); one trip."""
        if not customer_ids:
            return {}
        (flat,) = await self.run([self.ledgers_command(customer_ids, now_s)], "ledger")
        return self.parse_ledgers(customer_ids, flat)

    def ledgers_command(self, customer_ids: Sequence[str], now_s: float) -> bytes:
        """The packed EVALSHA of ledger.lua for `customer_ids` (to pipeline with others)."""
        args: list[Arg] = [f"{now_s - self.ledger_horizon_s:.3f}", VERSION_MEMBER]
        args += [self.keys.ledger(cid) for cid in customer_ids]
        return self._packed("ledger", [], args)

    @staticmethod
    def parse_ledgers(customer_ids: Sequence[str], flat: list[Any]) -> dict[str, LedgerView]:
        """ledger.lua's reply for `customer_ids`, as a view per customer."""
        out = {}
        for n, cid in enumerate(customer_ids):
            version, entries = flat[2 * n], flat[2 * n + 1]
            pairs = [(entries[i], float(entries[i + 1])) for i in range(0, len(entries), 2)]
            out[cid] = LedgerView.parse(-int(float(version)) if version else 0, pairs)
        return out

    def erase_customer(self, customer_id: str) -> bytes:
        """The packed EVALSHA of erase.lua for one customer."""
        k = self.keys
        keys = [
            k.profile(customer_id),
            k.timeline(customer_id),
            k.customer_notifications(customer_id),
            k.ledger(customer_id),
            k.controls(customer_id),
        ]
        return self._packed("erase", keys, [k.state("")])

    async def claim_due(
        self, now: float, lease_until: float, limit: int, timers: str | None = None
    ) -> list[tuple[str, float]]:
        """Claim due members of a timers zset (the notifications' unless `timers` names
        another, e.g. the inquiries' SLA timers) with a lease until `lease_until`."""
        key = timers or self.keys.timers
        flat = await self.meter.timed(
            "claim",
            self._call(self.redis, "claim", [key], [f"{now:.3f}", f"{lease_until:.3f}", limit]),
        )
        return [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def release(
        self, lease_until: float, members: Sequence[str], timers: str | None = None
    ) -> int:
        if not members:
            return 0
        key = timers or self.keys.timers
        call = self._call(self.redis, "release", [key], [f"{lease_until:.3f}", *members])
        return int(await self.meter.timed("claim", call))


def _bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


_INT_TOP = 1024
_INT_BULKS = [_bulk(b"%d" % i) for i in range(_INT_TOP)]  # small counts and versions
_SCORES: dict[float, bytes] = {}  # a batch's scores repeat (its `now`, its due times)


def _list_bulk(n: int) -> bytes:
    return _INT_BULKS[n] if n < _INT_TOP else _bulk(b"%d" % n)


def _score_bulks() -> dict[float, bytes]:
    if len(_SCORES) > 4096:
        _SCORES.clear()
    return _SCORES


def _score_bulk(cache: dict[float, bytes], score: float) -> bytes:
    """A score as Redis reads it (`repr`: the shortest text that reads back the same);
    0.0 is never cached (-0.0 equals it but is written `-0.0`)."""
    out = _bulk(repr(score).encode())
    if score:
        cache[score] = out
    return out
