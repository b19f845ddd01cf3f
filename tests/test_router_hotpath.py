"""What the router's hot-path shortcuts rely on (docs/performance.md): the partition a cached
murmur2 picks, the state JSON opening with its version (apply.lua reads it there), the state
written without its defaults, and the collector paused only inside a batch."""

from __future__ import annotations

import gc
import os
import random
from datetime import UTC, datetime

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from services.router.controls import controls_commands
from services.router.ledger import VERSION_MEMBER, LedgerView
from services.router.state import AttemptEntry, Leg, NotificationState, decode_state, encode_state
from services.router.store import Keys
from shared.gctune import gc_paused
from shared.kafka import key_partition
from shared.resp import execute, pack, pack_bytes, unpack

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def test_key_partition_is_the_default_partitioners_choice() -> None:
    default = DefaultPartitioner()
    rng = random.Random(7)
    for _ in range(2000):
        key = os.urandom(rng.randrange(0, 40) if rng.random() < 0.9 else rng.randrange(0, 600))
        n = rng.randrange(1, 64)
        parts = list(range(n))
        assert key_partition(key, n) == default(key, parts, parts)


def state(**kw: object) -> NotificationState:
    leg = Leg(
        step=0,
        channel="voice",
        address="+8613800000001",
        timeout_s=90.0,
        max_attempts=3,
        retry_delay_s=1.0,
    )
    values: dict[str, object] = {
        "v": 12,
        "id": "n1",
        "customer_id": "c1",
        "type": "overdue_notice",
        "category": "collection",
        "priority": "normal",
        "locale": "zh-CN",
        "occurred_at": NOW,
        "received_at": NOW,
        "legs": [leg],
    }
    values.update(kw)
    return NotificationState(**values)  # type: ignore[arg-type]


@given(
    st.lists(
        st.one_of(st.binary(max_size=40), st.binary(min_size=1000, max_size=1100)),
        min_size=1,
        max_size=30,
    )
)
def test_pack_bytes_packs_as_pack_does(args: list[bytes]) -> None:
    """The hot path's writer (`pack_bytes`) gives the same RESP as the general one, lengths
    past its table of length lines included, and `unpack` gives the arguments back."""
    packed = pack_bytes(args)
    assert packed == pack(*args)
    assert unpack(packed) == args


def test_the_state_json_opens_with_its_version_and_leaves_defaults_out() -> None:
    s = state()
    raw = encode_state(s)
    assert raw.startswith(b'{"v":12,')  # apply.lua: string.match(cur, '^{"v":(%d+)')
    assert b'"phase"' not in raw and b'"attempts"' not in raw and b'"kind"' not in raw
    assert decode_state(raw) == s
    moved = state(
        phase="final",
        status="failed",
        attempts=[
            AttemptEntry(
                leg=0,
                attempt=1,
                channel="voice",
                recipient="+86138****0001",
                outcome="busy",
                at=NOW,
            )
        ],
    )
    assert decode_state(encode_state(moved)) == moved


def test_the_ledger_version_member_is_never_a_contact() -> None:
    view = LedgerView.parse(3, [(VERSION_MEMBER, -3.0), ('["voice","attempt","L1","n:0:1"]', 5.0)])
    assert [(e.channel, e.kind, e.debt, e.attempt_id) for e in view.entries] == [
        ("voice", "attempt", "L1", "n:0:1")
    ]


def test_gc_paused_restores_the_collector_as_it_was() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    try:
        with gc_paused():
            raise RuntimeError("a failed batch")
    except RuntimeError:
        pass
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_replies_are_read_in_order_with_errors_in_place(
    redis_server: str, protocol: int
) -> None:
    """`shared.resp.execute` takes replies already buffered straight from hiredis' reader:
    thousands of replies, error replies among them, come back in order, each error as its
    exception, and the connection is usable afterwards."""
    client = Redis.from_url(redis_server, protocol=protocol)
    try:
        key = f"resp-test-{protocol}"
        await client.delete(key)
        commands = []
        for i in range(3000):
            commands.append(pack("HSET", key, f"f{i}", i))
            if i % 700 == 0:
                commands.append(pack("EVALSHA", "0" * 40, 0))  # NOSCRIPT
                commands.append(pack("INCR", key))  # WRONGTYPE
        commands.append(pack("HGETALL", key))
        replies = await execute(client, commands)
        assert len(replies) == len(commands)
        errors = [r for r in replies if isinstance(r, Exception)]
        assert len(errors) == 2 * len(range(0, 3000, 700))
        assert all(isinstance(e, NoScriptError) for e in errors[::2])
        assert all(isinstance(e, ResponseError) and "WRONGTYPE" in str(e) for e in errors[1::2])
        assert [r for r in replies[:-1] if not isinstance(r, Exception)] == [1] * 3000
        found = replies[-1]
        pairs = (
            found if isinstance(found, dict) else dict(zip(found[::2], found[1::2], strict=True))
        )
        assert pairs[b"f2999"] == b"2999" and len(pairs) == 3000
        assert await client.hget(key, "f7") == b"7"  # the pool's connections still work
        await client.delete(key)
    finally:
        await client.aclose()


@given(st.lists(st.text(min_size=1, max_size=300), max_size=5))
def test_controls_reads_are_hgetall_commands(customer_ids: list[str]) -> None:
    keys = Keys("p:")
    assert controls_commands(keys, customer_ids) == [
        pack("HGETALL", keys.controls(c)) for c in customer_ids
    ]
