"""Move the router's keys to another number of customer groups (`TONGDA_REDIS_KEY_GROUPS`).

Every key of a customer carries its group's hash tag (services/router/store.py, `Keys`), so
changing the number of groups renames them: run this with the routers stopped (the channel
services may run: their keys are not touched), against a single Redis, then start the routers
with the new value. `--from-groups 0` moves a deployment from the layout before groups (keys
without tags). Then, to move to Redis Cluster: `redis-cli --cluster import` (docs/operations.md,
"Redis Cluster").

    python -m tools.regroup_keys --to-groups 64 [--from-groups 0] [--dry-run]

Reads the Redis settings and `TONGDA_KEY_PREFIX` like the router (TONGDA_* variables).
States, indexes, timelines, ledgers, profiles and controls are renamed (RENAME keeps their
expiry); a group's timers and an input partition's outboxes are split by the customer each
member or record names. It scans the prefix's keys (SCAN), once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ResponseError

from services.router.outbox import OutRecord
from services.router.state import decode_state
from services.router.store import Keys
from shared.config import RouterSettings
from shared.redis import make_redis

# the router's keys of a customer, by the name after the group's base (store.py `Keys`)
_CUSTOMER = {
    "cn:": Keys.customer_notifications,
    "tl:": Keys.timeline,
    "profile:": Keys.profile,
    "led:": Keys.ledger,
    "ctl:": Keys.controls,
    "sxs:": Keys.customer_senders,
    "ciq:": Keys.customer_inquiries,
}


@dataclass
class Moved:
    renamed: int = 0
    timers: int = 0
    outbox: int = 0
    skipped: list[str] = field(default_factory=list)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _rest(name: str, old: Keys) -> str | None:
    """The part of a router key name after its group's base; None if not a grouped key."""
    rest = name[len(old.prefix) :]
    if old.groups:
        if not rest.startswith("{g"):
            return None
        rest = rest[rest.index("}") + 1 :]
    return rest


async def regroup(redis: Redis, prefix: str, from_groups: int, to_groups: int) -> Moved:
    """Move the router's keys under `prefix` from `from_groups` to `to_groups` groups."""
    if isinstance(redis, RedisCluster):
        raise SystemExit("regroup_keys runs against a single Redis (then import into a cluster)")
    if from_groups == to_groups:
        raise SystemExit("--from-groups and --to-groups are the same: nothing to move")
    old, new = Keys(prefix, from_groups), Keys(prefix, to_groups)
    moved = Moved()
    names = [
        k.decode() async for k in redis.scan_iter(match=_glob_escape(prefix) + "*", count=1000)
    ]
    renames: list[tuple[str, str]] = []
    states: list[tuple[str, str]] = []  # (old name, notification id)
    timers: list[str] = []
    boxes: list[tuple[str, str, int]] = []
    for name in names:
        rest = _rest(name, old)
        if rest is None:
            continue
        if rest.startswith("n:"):
            states.append((name, rest[2:]))
        elif rest == "timers":
            timers.append(name)
        elif rest.startswith("outbox:"):
            topic, _, number = rest[len("outbox:") :].rpartition(":")
            boxes.append((name, topic, int(number)))
        else:
            for head, key_of in _CUSTOMER.items():
                if rest.startswith(head):
                    renames.append((name, key_of(new, rest[len(head) :])))
                    break
    # a state's customer is in its JSON
    for chunk in _chunks(states, 500):
        pipe = redis.pipeline(transaction=False)
        for name, _ in chunk:
            pipe.get(name)
        raws = await pipe.execute(raise_on_error=False)
        for (name, nid), raw in zip(chunk, raws, strict=True):
            if isinstance(raw, ResponseError):  # a state stored as a hash (v, s) long ago
                raw = await redis.hget(name, "s")
            if raw is None:
                continue  # expired meanwhile
            renames.append((name, new.state(nid, decode_state(raw).customer_id)))
    for chunk in _chunks([(a, b) for a, b in renames if a != b], 500):
        pipe = redis.pipeline(transaction=False)
        for a, b in chunk:
            pipe.rename(a, b)
        await pipe.execute()
        moved.renamed += len(chunk)
    # timers and outboxes: read them all, delete them, write them to their new groups (a new
    # name may be an old one: with fewer groups, several old groups merge into one)
    members: dict[str, dict[bytes, float]] = {}
    for name in timers:
        scored: list[tuple[bytes, float]] = await redis.zrange(name, 0, -1, withscores=True)  # type: ignore[assignment]
        for member, score in scored:
            try:
                cid = str(orjson.loads(member)[1])
            except (ValueError, IndexError, TypeError):
                moved.skipped.append(f"{name}: {member!r}")
                continue
            members.setdefault(new.timers(cid), {})[member] = score
            moved.timers += 1
    records: dict[str, dict[bytes, bytes]] = {}
    for name, topic, partition in boxes:
        entries: dict[bytes, bytes] = await redis.hgetall(name)  # type: ignore[assignment]
        for eid, blob in entries.items():
            cid = OutRecord.unpack(eid.decode(), blob).key.decode()
            records.setdefault(new.outbox(topic, partition, cid), {})[eid] = blob
            moved.outbox += 1
    pipe = redis.pipeline(transaction=True)
    for name in [*timers, *(b[0] for b in boxes)]:
        pipe.delete(name)
    for key, by_member in members.items():
        pipe.zadd(key, by_member)
    for key, by_id in records.items():
        pipe.hset(key, mapping=by_id)  # type: ignore[arg-type]
    await pipe.execute()
    return moved


def _chunks(items: list[tuple[str, str]], size: int) -> Iterable[list[tuple[str, str]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def _main(args: argparse.Namespace) -> int:
    s = RouterSettings()
    redis = make_redis(s)
    try:
        if args.dry_run:
            old = Keys(s.key_prefix, args.from_groups)
            found = [
                k async for k in redis.scan_iter(match=_glob_escape(s.key_prefix) + "*", count=1000)
            ]
            grouped = [k for k in found if _rest(k.decode(), old) is not None]
            print(f"{len(grouped)} keys of the {args.from_groups}-group layout under the prefix")
            return 0
        moved = await regroup(redis, s.key_prefix, args.from_groups, args.to_groups)
    finally:
        await redis.aclose()
    print(
        f"renamed {moved.renamed} keys; {moved.timers} timers and {moved.outbox} outbox "
        f"records moved to their groups; {len(moved.skipped)} unreadable timers left out"
    )
    for line in moved.skipped[:20]:
        print(f"  left out: {line}", file=sys.stderr)
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--to-groups", type=int, required=True, help="the new redis_key_groups")
    p.add_argument(
        "--from-groups",
        type=int,
        default=None,
        help="the current layout (default: TONGDA_REDIS_KEY_GROUPS)",
    )
    p.add_argument("--dry-run", action="store_true", help="count the keys to move, move none")
    args = p.parse_args()
    if args.from_groups is None:
        args.from_groups = RouterSettings().redis_key_groups
    raise SystemExit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
