"""The router's Redis layout and its atomic operations (Lua, called by EVALSHA).

Every key of a customer lives in the hash slot of the customer's *group*, `g = crc32(customer
id) % redis_key_groups` (`Keys.group`): its names start with `<prefix>{g<g>}` (a Redis Cluster
hash tag), so each Lua call, which touches one customer's keys or a group's, touches one slot
and runs unchanged on a single Redis or on Redis Cluster (docs/operations.md, "Redis
Cluster"). With `redis_key_groups = 0` the names carry no tag: the layout before groups, for a
single Redis only.

Keys (`<prefix>` is `tongda:` by default; `{g}` is the group's hash tag):
  <prefix>{g}n:{notification_id}   the state JSON, which opens with its version `{"v":<n>,`
                                   (apply.lua checks it)            expires after retention
  <prefix>{g}cn:{customer_id}      set of the customer's notification ids  (for erasure)
  <prefix>{g}tl:{customer_id}      list of comms.record JSON, newest first (timeline)
  <prefix>{g}profile:{customer_id} customer.profile/v1 JSON as last received
  <prefix>{g}timers                zset member → due epoch seconds (the durable scheduler);
                                   a member names its customer, so its group
  <prefix>{g}outbox:{topic}:{part} hash effect id → record not yet acknowledged by the broker
                                   (the outbox of an input partition: one hash per group)
  <prefix>outpos:{topic}:{part}    hash out-topic:partition → offset to scan from on recovery
  <prefix>{g}led:{customer_id}     zset: the frequency ledger and its version
                                   (services/router/ledger.py)
  <prefix>{g}ctl:{customer_id}     hash: the borrower's own preferences (`pref:<channel>` →
                                   `<state>|<epoch s>`) and a hardship hold (`hold` →
                                   `<until epoch s>|<inquiry id>`) (services/router/controls.py)
  <prefix>{g}sxs:{customer_id}     set of the address hashes indexed for the customer
  <prefix>{g}ciq:{customer_id}     set of the customer's inquiry ids (for erasure)
  <prefix>sx:{address hash}        the customer whose profile lists that phone/email (sender index)
  <prefix>inq:{inquiry_id}         hash: an inquiry's classification, reply, escalation, resolution
  <prefix>svy:{address hash}       the inquiry whose satisfaction survey that sender may answer
  <prefix>inqtimers                zset: inquiry id → respond_by epoch seconds (SLA timers)

The untagged keys are only ever read or written one key per command (or per single-key Lua
call), never with a customer's keys in one atomic call.

Key names are built here only: the Lua scripts receive every name they touch, declared in
KEYS (so that Redis Cluster checks them before a script runs), except the notification states
erase.lua deletes (found in the customer's set; an erasure is idempotent: cut short by a slot
migration, the whole batch is retried).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import NoScriptError, ResponseError

from services.router.ledger import VERSION_MEMBER, LedgerView
from services.router.state import NotificationState, decode_state
from shared.redis import RedisMeter
from shared.resp import Arg, Stream, execute, pack, pack_bytes

_LUA = Path(__file__).with_name("lua")
_SCRIPTS = ("apply", "read", "erase", "claim", "release", "ledger")
R = TypeVar("R")

# what a group's base and an id are joined with in key names
STATE, CUSTOMER_NOTIFICATIONS, TIMELINE, LEDGER, TIMERS = "n:", "cn:", "tl:", "led:", "timers"


@dataclass(frozen=True)
class Keys:
    prefix: str
    groups: int = 64  # settings.redis_key_groups; 0: no hash tags (a single Redis only)

    # each group's base (see `base`), made once: key names are built for every event
    _bases: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _bases_bytes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the key prefix must not contain { or } (Redis Cluster hash tags)")
        if self.groups < 0:
            raise ValueError("redis_key_groups must be 0 or more")
        bases = tuple(
            f"{self.prefix}{{g{g}}}" if self.groups else self.prefix for g in self.all_groups()
        )
        object.__setattr__(self, "_bases", bases)
        object.__setattr__(self, "_bases_bytes", tuple(b.encode() for b in bases))

    # --- groups -------------------------------------------------------------------------

    def group(self, customer_id: str) -> int:
        """The customer's group: every key of the customer is in its hash slot."""
        return zlib.crc32(customer_id.encode()) % self.groups if self.groups else 0

    def all_groups(self) -> range:
        return range(max(self.groups, 1))

    def base(self, group: int) -> str:
        """What every key name of a group starts with: the prefix and the group's hash tag
        (`{g<group>}`; none when `groups` is 0)."""
        return self._bases[group]

    def of(self, customer_id: str) -> str:
        return self._bases[self.group(customer_id)]

    # --- a customer's keys (in its group's slot) ----------------------------------------

    def state(self, notification_id: str, customer_id: str) -> str:
        return f"{self.of(customer_id)}{STATE}{notification_id}"

    def group_state(self, group: int, notification_id: str) -> str:
        return f"{self.base(group)}{STATE}{notification_id}"

    def customer_notifications(self, customer_id: str) -> str:
        return f"{self.of(customer_id)}{CUSTOMER_NOTIFICATIONS}{customer_id}"

    def timeline(self, customer_id: str) -> str:
        return f"{self.of(customer_id)}{TIMELINE}{customer_id}"

    def profile(self, customer_id: str) -> str:
        return f"{self.of(customer_id)}profile:{customer_id}"

    def timers(self, customer_id: str) -> str:
        """The scheduler's zset of the customer's group."""
        return self.group_timers(self.group(customer_id))

    def group_timers(self, group: int) -> str:
        return f"{self.base(group)}{TIMERS}"

    def outbox(self, topic: str, partition: int, customer_id: str) -> str:
        """The outbox of an input partition for the customer's group."""
        return self.group_outbox(topic, partition, self.group(customer_id))

    def group_outbox(self, topic: str, partition: int, group: int) -> str:
        return f"{self.base(group)}outbox:{topic}:{partition}"

    def ledger(self, customer_id: str) -> str:
        return f"{self.of(customer_id)}{LEDGER}{customer_id}"

    def controls(self, customer_id: str) -> str:
        return f"{self.of(customer_id)}ctl:{customer_id}"

    def customer_senders(self, customer_id: str) -> str:
        return f"{self.of(customer_id)}sxs:{customer_id}"

    def customer_inquiries(self, customer_id: str) -> str:
        return f"{self.of(customer_id)}ciq:{customer_id}"

    def transition_keys(
        self, notification_id: str, customer_id: str, outbox: str
    ) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
        """The keys apply.lua declares for one transition (its order): state, customer's
        notification set, timeline, ledger, the group's timers, the outbox given."""
        c = customer_id.encode()  # bytes all along: the hot path (same names as above)
        base = self._bases_bytes[zlib.crc32(c) % self.groups if self.groups else 0]
        return (
            base + b"n:" + notification_id.encode(),
            base + b"cn:" + c,
            base + b"tl:" + c,
            base + b"led:" + c,
            base + b"timers",
            outbox.encode(),
        )

    # --- untagged keys (one per command) ------------------------------------------------

    def outpos(self, topic: str, partition: int) -> str:
        return f"{self.prefix}outpos:{topic}:{partition}"

    def sender(self, address_hash: str) -> str:
        return f"{self.prefix}sx:{address_hash}"

    def inquiry(self, inquiry_id: str) -> str:
        return f"{self.prefix}inq:{inquiry_id}"

    def survey(self, address_hash: str) -> str:
        return f"{self.prefix}svy:{address_hash}"

    @property
    def inquiry_timers(self) -> str:
        return f"{self.prefix}inqtimers"

    def by_group(self, customer_ids: Iterable[str]) -> dict[int, list[str]]:
        """The customer ids per group, each in the order given."""
        out: dict[int, list[str]] = {}
        for cid in customer_ids:
            out.setdefault(self.group(cid), []).append(cid)
        return out


@dataclass(frozen=True, slots=True)
class Read(Generic[R]):
    """Packed read commands to pipeline with others, and how to read their replies."""

    commands: list[bytes]
    parse: Callable[[list[Any]], R]


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
        groups: int = 64,
    ) -> None:
        self.redis = redis
        # on Redis Cluster a Lua call may touch one hash slot only: apply() splits a chunk
        self.cluster = isinstance(redis, RedisCluster)
        self.meter = meter or RedisMeter("tongda-router")  # times each round trip
        self.keys = Keys(prefix, groups)
        self.retention_s = retention_s
        self.timeline_max = timeline_max
        # how long ledger entries matter (the longest cap window): older ones are pruned
        self.ledger_horizon_s = ledger_horizon_s
        self.ledger_ttl_s = int(ledger_horizon_s) + 86_400
        self._sources = {n: (_LUA / f"{n}.lua").read_text() for n in _SCRIPTS}
        self._sha: dict[str, str] = {}

    async def load_scripts(self) -> None:
        """Load every script (again after a Redis restart lost them: NOSCRIPT); on a cluster
        into every primary."""
        for name, source in self._sources.items():
            self._sha[name] = str(await self.redis.script_load(source))

    def _call(self, client: Redis, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return client.evalsha(self._sha[name], len(keys), *keys, *args)

    def _packed(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> bytes:
        return pack("EVALSHA", self._sha[name], len(keys), *keys, *args)

    async def run(self, commands: Sequence[bytes], op: str = "write") -> list[Any]:
        """Run packed commands in one round trip (timed as `op`; on a cluster one per node
        concurrently); after a Redis restart lost the scripts (NOSCRIPT, which means the
        script did not run), load them and run those again."""
        replies = await self.meter.timed(op, execute(self.redis, commands))
        return await self.settle(commands, replies)

    async def run_reads(self, reads: Sequence[Read[Any]], op: str = "read") -> list[Any]:
        """Run the commands of several reads in one round trip; each read's parsed reply."""
        replies = await self.run([c for r in reads for c in r.commands], op)
        out, at = [], 0
        for r in reads:
            out.append(r.parse(replies[at : at + len(r.commands)]))
            at += len(r.commands)
        return out

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

    def apply(self, chunk: Sequence[Transition]) -> list[tuple[bytes, Sequence[int]]]:
        """The packed EVALSHA calls of apply.lua for a chunk of transitions, each with the
        positions in `chunk` of the transitions it applies, in the order of its reply (a list
        of 1 applied / 0 not at the expected version / 2 the ledger changed).

        On a single Redis: one call for the chunk. On Redis Cluster, where one Lua call may
        touch one hash slot only: one call per customer group present (in chunk order within
        a group: a customer's transitions stay in order, they are all in its group).

        Flat arguments, all bytes (see apply.lua for the layout): the hot path's biggest
        command, packed with `pack_bytes`."""
        if not self.cluster:
            return [(self._apply_command(chunk), range(len(chunk)))]
        by_group: dict[int, list[int]] = {}
        group = self.keys.group
        for i, t in enumerate(chunk):
            by_group.setdefault(group(t.customer_id), []).append(i)
        return [
            (self._apply_command([chunk[i] for i in positions]), positions)
            for positions in by_group.values()
        ]

    def _apply_command(self, chunk: Sequence[Transition]) -> bytes:
        prune = min((t.ledger_prune_before for t in chunk), default=0.0)
        keys: list[bytes] = []
        args: list[bytes] = [
            b"%d" % self.retention_s,
            b"%d" % self.timeline_max,
            b"%d" % self.ledger_ttl_s,
            repr(prune).encode(),
            VERSION_MEMBER.encode(),
        ]
        add = args.append
        transition_keys = self.keys.transition_keys
        for t in chunk:
            keys += transition_keys(t.notification_id, t.customer_id, t.outbox_key)
            add(b"%d" % t.expected_version)
            add(t.notification_id.encode())
            add(t.state_json)
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
        head = [b"EVALSHA", self._sha["apply"].encode(), b"%d" % len(keys)]
        return pack_bytes(head + keys + args)

    def states_read(self, ids: Sequence[tuple[str, str]]) -> Read[list[NotificationState | None]]:
        """Read the states of (notification id, customer id): one read.lua call per group."""
        positions: dict[int, list[int]] = {}
        for i, (_, cid) in enumerate(ids):
            positions.setdefault(self.keys.group(cid), []).append(i)
        commands = [
            self._packed("read", [self.keys.state(*ids[i]) for i in at], [])
            for at in positions.values()
        ]

        def parse(replies: list[Any]) -> list[NotificationState | None]:
            out: list[NotificationState | None] = [None] * len(ids)
            for at, raws in zip(positions.values(), replies, strict=True):
                for i, raw in zip(at, raws, strict=True):
                    out[i] = decode_state(raw) if raw else None
            return out

        return Read(commands, parse)

    async def read_states(
        self, ids: Sequence[tuple[str, str]]
    ) -> list[NotificationState | None]:
        """The state of each (notification id, customer id) (its version is `v`), None where
        unknown; one round trip."""
        if not ids:
            return []
        (states,) = await self.run_reads([self.states_read(ids)])
        return states  # type: ignore[no-any-return]

    async def find_state(self, notification_id: str) -> NotificationState | None:
        """The state of a notification whose customer is not known: read in every group
        (one pipelined round trip; the API's lookup by id)."""
        groups = self.keys.all_groups()
        commands = [
            self._packed("read", [self.keys.group_state(g, notification_id)], []) for g in groups
        ]
        for (raw,) in await self.run(commands, "read"):
            if raw:
                return decode_state(raw)
        return None

    async def read_ledgers(
        self, customer_ids: Sequence[str], now_s: float
    ) -> dict[str, LedgerView]:
        """The frequency ledger of each customer (entries within the horizon); one trip."""
        if not customer_ids:
            return {}
        (views,) = await self.run_reads([self.ledgers_read(customer_ids, now_s)], "ledger")
        return views  # type: ignore[no-any-return]

    def ledgers_read(
        self, customer_ids: Sequence[str], now_s: float
    ) -> Read[dict[str, LedgerView]]:
        """The ledger.lua calls for `customer_ids` (one per group), to pipeline with others."""
        groups = list(self.keys.by_group(customer_ids).values())
        oldest = f"{now_s - self.ledger_horizon_s:.3f}"
        commands = [
            self._packed("ledger", [self.keys.ledger(c) for c in cids], [oldest, VERSION_MEMBER])
            for cids in groups
        ]

        def parse(replies: list[Any]) -> dict[str, LedgerView]:
            out: dict[str, LedgerView] = {}
            for cids, flat in zip(groups, replies, strict=True):
                out.update(self.parse_ledgers(cids, flat))
            return out

        return Read(commands, parse)

    @staticmethod
    def parse_ledgers(customer_ids: Sequence[str], flat: list[Any]) -> dict[str, LedgerView]:
        """ledger.lua's reply for `customer_ids`, as a view per customer."""
        out = {}
        for n, cid in enumerate(customer_ids):
            version, entries = flat[2 * n], flat[2 * n + 1]
            pairs = [(entries[i], float(entries[i + 1])) for i in range(0, len(entries), 2)]
            out[cid] = LedgerView.parse(-int(float(version)) if version else 0, pairs)
        return out

    def profiles_read(self, customer_ids: Sequence[str]) -> Read[dict[str, bytes | None]]:
        """The stored profile JSON of each customer: one MGET per group."""
        groups = list(self.keys.by_group(customer_ids).values())
        commands = [pack("MGET", *[self.keys.profile(c) for c in cids]) for cids in groups]

        def parse(replies: list[Any]) -> dict[str, bytes | None]:
            out: dict[str, bytes | None] = {}
            for cids, values in zip(groups, replies, strict=True):
                out.update(zip(cids, values, strict=True))
            return out

        return Read(commands, parse)

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
        return self._packed("erase", keys, [k.of(customer_id) + STATE])

    async def claim_due(
        self, now: float, lease_until: float, limit: int, timers: str
    ) -> list[tuple[str, float]]:
        """Claim due members of a timers zset (a group's, or the inquiries' SLA timers) with a
        lease until `lease_until`."""
        flat = await self.meter.timed(
            "claim",
            self._call(self.redis, "claim", [timers], [f"{now:.3f}", f"{lease_until:.3f}", limit]),
        )
        return [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def claim_due_groups(
        self, now: float, lease_until: float, limit: int
    ) -> dict[int, list[tuple[str, float]]]:
        """Claim due members of every group's timers (at most `limit` each), in one pipelined
        round trip; the groups that had some."""
        groups = self.keys.all_groups()
        args: list[Arg] = [f"{now:.3f}", f"{lease_until:.3f}", limit]
        commands = [self._packed("claim", [self.keys.group_timers(g)], args) for g in groups]
        replies = await self.run(commands, "claim")
        return {
            g: [(flat[i].decode(), float(flat[i + 1])) for i in range(0, len(flat), 2)]
            for g, flat in zip(groups, replies, strict=True)
            if flat
        }

    async def release(self, lease_until: float, members: Sequence[str], timers: str) -> int:
        if not members:
            return 0
        call = self._call(self.redis, "release", [timers], [f"{lease_until:.3f}", *members])
        return int(await self.meter.timed("claim", call))

    async def release_groups(self, lease_until: float, members: dict[int, list[str]]) -> int:
        """`release` in several groups' timers, one pipelined round trip."""
        lease = f"{lease_until:.3f}"
        commands = [
            self._packed("release", [self.keys.group_timers(g)], [lease, *ms])
            for g, ms in members.items()
            if ms
        ]
        return sum(int(n) for n in await self.run(commands, "claim"))
