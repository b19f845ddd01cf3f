"""apply.lua on a real Redis, through `Store.apply`: the checks before the first write, the
ledger's version within one call, one EXPIRE per key per call, the timeline's bound."""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from services.router.ledger import VERSION_MEMBER
from services.router.store import Store, Transition


def state(v: int, pad: int = 600) -> bytes:
    """A state JSON as state.py writes it: it opens with its version."""
    return orjson.dumps({"v": v, "pad": "x" * pad})


def transition(store: Store, nid: str, cid: str, expected: int, **kw: Any) -> Transition:
    fields: dict[str, Any] = {
        "outbox": [(f"{nid}/{expected + 1}/0", b"rec")],
        "timers_add": [],
        "timers_del": [],
        "timeline": [],
    }
    fields.update(kw)
    return Transition(
        notification_id=nid,
        customer_id=cid,
        expected_version=expected,
        state_json=state(expected + 1),
        outbox_key=store.keys.outbox("t", 0, cid),
        **fields,
    )


async def apply(store: Store, chunk: list[Transition]) -> list[int]:
    ((command, _),) = store.apply(chunk)
    (reply,) = await store.run([command])
    return [int(r) for r in reply]


async def calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_one_customers_transitions_in_one_call(redis: Redis) -> None:
    """Three notifications of one customer in one call: the ledger's version each decision
    read is checked against the writes before it in the same call; a stale one (2) writes
    nothing; the customer's keys each get one EXPIRE, with the deadline of each write."""
    store = Store(redis, "tl1:", 600, 10, 3600.0)
    await store.load_scripts()
    k, cid = store.keys, "c1"
    chunk = [
        transition(store, "n1", cid, 0, ledger_read_version=0, ledger_add=[("a", 1.0)]),
        transition(
            store, "n2", cid, 0, ledger_read_version=1, ledger_add=[("b", 2.0)], timeline=[b"t2"]
        ),
        transition(store, "n3", cid, 0, ledger_read_version=1, ledger_add=[("c", 3.0)]),
        transition(store, "n4", cid, 0, ledger_add=[("d", 4.0)], timeline=[b"t4"]),
    ]
    await redis.config_resetstat()
    assert await apply(store, chunk) == [1, 1, 2, 1]
    assert await redis.get(k.state("n3", cid)) is None  # refused: nothing written
    assert not await redis.hexists(k.outbox("t", 0, cid), "n3/1/0")
    assert await redis.smembers(k.customer_notifications(cid)) == {b"n1", b"n2", b"n4"}
    ledger = await redis.zrange(k.ledger(cid), 0, -1, withscores=True)
    assert ledger == [(VERSION_MEMBER.encode(), -3.0), (b"a", 1.0), (b"b", 2.0), (b"d", 4.0)]
    assert await redis.lrange(k.timeline(cid), 0, -1) == [b"t4", b"t2"]
    assert await calls(redis, "zscore") == 1  # the version read once, then known
    assert await calls(redis, "expire") == 3  # customer set, timeline, ledger: once each
    assert 590 < await redis.ttl(k.customer_notifications(cid)) <= 600
    assert 590 < await redis.ttl(k.timeline(cid)) <= 600
    assert 3600 + 86_400 - 10 < await redis.ttl(k.ledger(cid)) <= 3600 + 86_400
    # the next call sees the version written: a decision that read 3 applies, 2 does not
    late = [
        transition(store, "n5", cid, 0, ledger_read_version=2, ledger_add=[("e", 5.0)]),
        transition(store, "n6", cid, 0, ledger_read_version=3, ledger_add=[("f", 6.0)]),
    ]
    assert await apply(store, late) == [2, 1]
    assert await redis.zscore(k.ledger(cid), VERSION_MEMBER) == -4.0


async def test_the_state_version_check(redis: Redis) -> None:
    """A transition applies only on the version it expects (read from the state's head),
    0 only where there is no state; a state still stored as a hash (v, s) is read too."""
    store = Store(redis, "tl2:", 600, 10, 3600.0)
    await store.load_scripts()
    k = store.keys
    await redis.set(k.state("n1", "c1"), orjson.dumps({"v": 123456789, "pad": "y" * 900}))
    await redis.hset(k.state("n2", "c2"), mapping={"v": 7, "s": state(7)})
    chunk = [
        transition(store, "n1", "c1", 0),  # exists
        transition(store, "n1", "c1", 12345678),  # not its version (a prefix of it)
        transition(store, "n1", "c1", 123456789),
        transition(store, "n2", "c2", 6),
        transition(store, "n2", "c2", 7),
        transition(store, "n3", "c3", 1),  # no state
        transition(store, "n3", "c3", 0, ledger_read_version=5),  # ledger moved (none): 2
        transition(store, "n1", "c1", 1, ledger_read_version=5),  # state moved first: 0
    ]
    assert await apply(store, chunk) == [0, 0, 1, 0, 1, 0, 2, 0]
    assert await redis.get(k.state("n1", "c1")) == state(123456790)
    assert await redis.get(k.state("n2", "c2")) == state(8)
    assert await redis.get(k.state("n3", "c3")) is None
    assert await redis.hkeys(k.outbox("t", 0, "c1")) == [b"n1/123456790/0"]


async def test_the_timeline_keeps_its_newest_records(redis: Redis) -> None:
    """The timeline holds at most `timeline_max` records, newest first; LTRIM only once
    the list is longer than that."""
    store = Store(redis, "tl3:", 600, 3, 3600.0)
    await store.load_scripts()
    k = store.keys
    await redis.config_resetstat()
    await apply(store, [transition(store, "n1", "c1", 0, timeline=[b"1", b"2"])])
    assert await calls(redis, "ltrim") == 0
    await apply(store, [transition(store, "n1", "c1", 1, timeline=[b"3", b"4", b"5"])])
    assert await redis.lrange(k.timeline("c1"), 0, -1) == [b"5", b"4", b"3"]
    assert await calls(redis, "ltrim") == 1
