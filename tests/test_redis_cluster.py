"""tongda on Redis Cluster (docs/operations.md, "Redis Cluster").

A real local cluster (three primaries, `tests/conftest.py` `redis_cluster`) runs the router's
routing tests and its engine-level race test, unchanged: on a cluster a Lua call or MULTI
whose keys are of two hash slots fails with CROSSSLOT, so these passing shows each atomic
call touches one slot. The tests below check that directly too, and that a running router
keeps routing while the slots of its groups move between nodes (a resharding).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, NoPermissionError

from services.router.store import Keys, Store, Transition
from shared.config import RouterSettings
from shared.errors import ConfigError
from shared.redis import cluster_nodes, durability_warning, is_cluster, make_redis
from shared.resp import execute, pack, unpack
from tests.router_support import Reader, engine_harness, value

# The routing and fault tests of a single Redis, collected again here where `redis_server`
# is the cluster's URL (the fixture below overrides the session's single Redis).
from tests.test_contact_rules_engine import (  # noqa: F401
    test_erasing_a_customer_erases_the_ledger,
    test_two_routers_racing_never_take_more_than_the_cap,
)
from tests.test_router_engine import (  # noqa: F401
    event,
    test_a_state_stored_as_a_hash_before_states_were_strings_moves_on,
    test_bad_events_are_dead_lettered_and_neighbours_routed,
    test_busy_voice_falls_back_and_everything_is_recorded,
    test_erasing_a_customer_ends_its_notifications_in_flight,
    test_outbox_recovery_sends_exactly_what_is_missing,
    test_profiles_feed_routing_and_tombstones_erase,
    test_same_id_twice_is_one_notification,
    test_step_timeout_fires_from_the_scheduler,
)
from tests.tls_support import make_pki, terminate
from tools.devstack import RedisClusterServers, RedisServer
from tools.devstack.redis_cluster import cluster_port


@pytest.fixture
def redis_server(redis_cluster: str) -> str:
    """Here the Redis every router test uses is the cluster."""
    return redis_cluster




def test_the_cluster_url_form_and_setting() -> None:
    url = "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/"
    assert cluster_nodes(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert is_cluster(RouterSettings(api_token="t", redis_url=url))
    assert is_cluster(RouterSettings(api_token="t", redis_cluster=True))
    assert not is_cluster(RouterSettings(api_token="t", redis_url="redis://h:6379/0"))
    with pytest.raises(ConfigError, match="KEY_GROUPS=0"):
        make_redis(RouterSettings(api_token="t", redis_url=url, redis_key_groups=0))
    with pytest.raises(ConfigError, match="database 0"):
        make_redis(RouterSettings(api_token="t", redis_url="redis+cluster://h:1/3"))


def test_a_customers_keys_are_all_in_its_groups_slot() -> None:
    keys = Keys("tongda:", 64)
    cid = "cust-42"
    group = zlib.crc32(cid.encode()) % 64
    assert keys.group(cid) == group
    names = [
        keys.state("n1", cid),
        keys.customer_notifications(cid),
        keys.timeline(cid),
        keys.profile(cid),
        keys.timers(cid),
        keys.outbox("t", 3, cid),
        keys.ledger(cid),
        keys.controls(cid),
        keys.customer_senders(cid),
        keys.customer_inquiries(cid),
    ]
    assert all(n.startswith(f"tongda:{{g{group}}}") for n in names)
    assert {key_slot(n.encode()) for n in names} == {key_slot(f"{{g{group}}}".encode())}
    # apply.lua's keys, built as bytes on the hot path: the same names
    for k in (keys, Keys("tongda:", 0)):
        box = k.outbox("t", 3, cid)
        expected = [k.state("n1", cid), k.customer_notifications(cid), k.timeline(cid)]
        expected += [k.ledger(cid), k.timers(cid), box]
        assert k.transition_keys("n1", cid, box) == tuple(n.encode() for n in expected)
    # no groups: the layout before groups (a single Redis only)
    assert Keys("tongda:", 0).state("n1", cid) == "tongda:n:n1"
    with pytest.raises(ValueError, match="hash tags"):
        Keys("a{b}:")


def transition(i: int, keys: Keys) -> Transition:
    cid = f"c{i % 37}"
    return Transition(
        notification_id=f"n{i}",
        customer_id=cid,
        expected_version=0,
        state_json=b'{"v":1}',
        outbox_key=keys.outbox("t", 0, cid),
        outbox=[(f"n{i}/1/0", b"x")],
        timers_add=[(orjson.dumps(["retry", cid, f"n{i}", 0, 1]).decode(), 1.0)],
        timers_del=[],
        timeline=[b"{}"],
        ledger_add=[("m", 2.0)],
    )


async def test_each_lua_call_of_a_chunk_names_keys_of_one_slot(cluster: RedisCluster) -> None:
    """Store.apply on a cluster: one call per group, every key it touches declared in KEYS,
    all of the group's slot; all applied, each in the chunk's order."""
    store = Store(cluster, "tc1:", 600, 10, 3600.0)
    await store.load_scripts()
    chunk = [transition(i, store.keys) for i in range(120)]
    calls = store.apply(chunk)
    assert sorted(i for _, at in calls for i in at) == list(range(120))
    assert len(calls) == len({store.keys.group(t.customer_id) for t in chunk}) > 1
    for command, positions in calls:
        args = unpack(command)
        declared = args[3 : 3 + int(args[2])]  # KEYS: six per transition, all of one slot
        assert len(declared) == 6 * len(positions)
        assert len({key_slot(k) for k in declared}) == 1
        (group,) = {store.keys.group(chunk[i].customer_id) for i in positions}
        assert all(k.startswith(store.keys.base(group).encode()) for k in declared)
        # nothing else in the call names a key
        assert not [a for a in args[3 + len(declared) :] if a.startswith(b"tc1:")]
    replies = await store.run([c for c, _ in calls])
    assert [int(r) for reply in replies for r in reply] == [1] * 120
    got = await store.run(
        [pack("GET", store.keys.state(t.notification_id, t.customer_id)) for t in chunk], "read"
    )
    assert got == [b'{"v":1}'] * 120
    due = await store.claim_due_groups(2.0, 5.0, 1000)
    assert sum(len(d) for d in due.values()) == 120
    assert await store.release_groups(5.0, {g: [m for m, _ in d] for g, d in due.items()}) == 120


async def test_execute_routes_each_command_to_its_node(cluster: RedisCluster) -> None:
    """shared.resp.execute on a cluster: commands of many slots in one call, replies in
    order; a command naming keys of two slots is refused (CROSSSLOT), the others still run."""
    keys = [f"tx:{{k{i}}}" for i in range(40)]
    replies = await execute(cluster, [pack("SET", k, i) for i, k in enumerate(keys)])
    assert replies == [b"OK"] * 40
    got = await execute(cluster, [pack("GET", k) for k in keys])
    assert got == [str(i).encode() for i in range(40)]
    slots = {key_slot(k.encode()) for k in keys[:2]}
    assert len(slots) == 2
    cross, one = await execute(cluster, [pack("MGET", keys[0], keys[1]), pack("GET", keys[2])])
    assert isinstance(cross, ClusterCrossSlotError)
    assert one == b"2"


def migrate_slot(cluster: RedisClusterServers, slot: int) -> None:
    """Move one hash slot to another primary as `redis-cli --cluster reshard` does:
    IMPORTING/MIGRATING, MIGRATE its keys a few at a time, then assign it everywhere."""
    ids = {n.port: cluster.cli("cluster", "myid", port=n.port).strip() for n in cluster.nodes}
    owner = None
    for line in cluster.cli("cluster", "nodes").splitlines():
        fields = line.split()
        for spec in fields[8:]:
            lo, _, hi = spec.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                owner = next(n for n in cluster.nodes if ids[n.port] == fields[0])
    assert owner is not None
    target = next(n for n in cluster.nodes if n is not owner)
    src, dst = ids[owner.port], ids[target.port]
    cluster.cli("cluster", "setslot", str(slot), "importing", src, port=target.port)
    cluster.cli("cluster", "setslot", str(slot), "migrating", dst, port=owner.port)
    while True:
        names = cluster.cli("cluster", "getkeysinslot", str(slot), "3", port=owner.port).split()
        if not names:
            break
        cluster.cli(
            *("migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys", *names),
            port=owner.port,
        )
    for node in cluster.nodes:
        cluster.cli("cluster", "setslot", str(slot), "node", dst, port=node.port)


@pytest.mark.timeout(120)
async def test_routing_goes_on_while_the_groups_slots_move(
    broker: str, redis_cluster: str, redis_cluster_process: RedisClusterServers
) -> None:
    """A running router while the slots of its customers' groups move to another node
    (keys migrated a few at a time while requests arrive): MOVED/ASK/TRYAGAIN are followed
    or retried; every notification is dispatched exactly once."""
    async with engine_harness(broker, redis_cluster) as h:
        t = h.settings.topics
        keys = h.store.keys
        customers = [f"mv{i}" for i in range(6)]
        slots = sorted({key_slot(keys.base(keys.group(c)).encode()) for c in customers})

        async def publish(tag: str, n: int) -> None:
            for i in range(n):
                cid = customers[i % len(customers)]
                body = event(f"{tag}-{i}", cid=cid, contacts={"phone": "+8613800000001"})
                await h.publish(t.requested, body, key=cid)

        # what shared.resp sends again through redis-py: the replies that redirected
        redirected: list[str] = []
        again = h.redis.execute_command

        async def counting(*args: Any, **kw: Any) -> Any:
            redirected.append(str(args[0]))
            return await again(*args, **kw)

        async with Reader(broker, t.dispatch("voice")) as r:
            await publish("before", 30)
            await r.take(t.dispatch("voice"), 30)
            h.redis.execute_command = counting  # type: ignore[method-assign]
            moving = asyncio.create_task(publish("during", 60))
            for slot in slots:
                await asyncio.to_thread(migrate_slot, redis_cluster_process, slot)
            await moving
            await r.take(t.dispatch("voice"), 90, timeout_s=60)
            await r.settle(0.5)
        ids = [value(m)["notification_id"] for m in r.seen]
        assert len(ids) == len(set(ids)) == 90
        assert redirected  # the moves were met (MOVED at least), not slipped past
        # every transition whole: each state, and each in its customer's set
        pairs = [(i, customers[int(i.split("-")[1]) % len(customers)]) for i in ids]
        assert all(await h.store.read_states(pairs))
        for cid in customers:
            members = await h.redis.smembers(keys.customer_notifications(cid))
            assert len(members) == 15


async def test_durability_is_checked_on_every_primary(
    cluster: RedisCluster, redis_cluster_process: RedisClusterServers
) -> None:
    assert await durability_warning(cluster) is None
    node = redis_cluster_process.nodes[1]
    redis_cluster_process.cli("config", "set", "appendfsync", "everysec", port=node.port)
    try:
        warning = await durability_warning(cluster)
        assert warning is not None and f":{node.port} runs with" in warning
    finally:
        redis_cluster_process.cli("config", "set", "appendfsync", "always", port=node.port)


class TlsCluster:
    """Three primaries serving TLS only (the cluster bus too, with the client certificate),
    the `default` user off, an `admin` user (to create the cluster) and the ACL user
    docs/operations.md recommends: `tongda`, keys `tongda:*`, no @admin or @dangerous."""

    PASSWORD = "cluster-secret-1"

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pki = make_pki(directory / "pki")
        self.ports = [cluster_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.cli = [shutil.which("redis-cli") or "redis-cli", "--tls", "--cacert", str(self.pki.ca)]
        self.cli += ["--user", "admin", "--pass", "admin-pw", "--no-auth-warning"]

    @property
    def nodes(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    def run(self, *args: str, port: int | None = None) -> str:
        where = ["-p", str(port)] if port else []
        done = subprocess.run([*self.cli, *where, *args], capture_output=True, timeout=30)
        return done.stdout.decode() if done.returncode == 0 else ""

    def start(self) -> None:
        pki = self.pki
        for port in self.ports:
            data = self.dir / f"n{port}"
            data.mkdir()
            self.procs.append(
                subprocess.Popen(
                    [
                        RedisServer.find_binary(),
                        *("--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port)),
                        *("--tls-cert-file", str(pki.server_cert)),
                        *("--tls-key-file", str(pki.server_key)),
                        *("--tls-client-cert-file", str(pki.client_cert)),
                        *("--tls-client-key-file", str(pki.client_key)),
                        *("--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "optional"),
                        *("--tls-cluster", "yes", "--cluster-port", str(port + 10_000)),
                        *("--cluster-enabled", "yes", "--dir", str(data)),
                        *("--save", "", "--appendonly", "yes", "--appendfsync", "always"),
                        *("--user", "default", "off", "--user", "admin", "on", ">admin-pw"),
                        *("~*", "&*", "+@all", "--user", "tongda", "on", f">{self.PASSWORD}"),
                        *("~tongda:*", "&*", "+@all", "-@admin", "-@dangerous"),
                    ],
                    stdout=self._log(port),
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 20
        for port in self.ports:
            while "PONG" not in self.run("ping", port=port):
                assert time.monotonic() < deadline, "TLS node not answering"
                time.sleep(0.05)
        create = ["--cluster", "create", *self.nodes, "--cluster-replicas", "0", "--cluster-yes"]
        assert self.run(*create), "redis-cli --cluster create failed"
        for port in self.ports:
            while "cluster_state:ok" not in self.run("cluster", "info", port=port):
                assert time.monotonic() < deadline, "TLS cluster not ok"
                time.sleep(0.05)

    def _log(self, port: int) -> IO[bytes]:
        log = (self.dir / f"n{port}.log").open("ab")
        self.logs.append(log)
        return log

    def stop(self) -> None:
        for proc in self.procs:
            terminate(proc)
        for log in self.logs:
            log.close()


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[TlsCluster]:
    cluster = TlsCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def test_tls_and_the_acl_user_on_a_cluster(tls_cluster: TlsCluster) -> None:
    """The TLS and ACL settings apply to every node of a cluster reached by a
    `rediss+cluster://` URL: apply.lua runs in several groups' slots and the states read
    back; a key outside the user's pattern is refused; plaintext gets nowhere."""
    settings = RouterSettings(
        api_token="t",
        redis_url="rediss+cluster://" + ",".join(tls_cluster.nodes) + "/",
        redis_ssl_cafile=tls_cluster.pki.ca,
        redis_username="tongda",
        redis_password=TlsCluster.PASSWORD,
    )
    client = make_redis(settings)
    assert isinstance(client, RedisCluster)
    try:
        store = Store(client, "tongda:tls:", 600, 10, 3600.0)
        await store.load_scripts()
        chunk = [transition(i, store.keys) for i in range(40)]
        calls = store.apply(chunk)
        assert len(calls) > 1
        replies = await store.run([c for c, _ in calls])
        assert sum(int(r) for reply in replies for r in reply) == 40
        names = [pack("GET", store.keys.state(t.notification_id, t.customer_id)) for t in chunk]
        assert await store.run(names, "read") == [b'{"v":1}'] * 40
        assert await durability_warning(client) is None  # CONFIG is @admin: not asked
        (refused,) = await execute(client, [pack("SET", "{x}elsewhere", 1)])
        assert isinstance(refused, NoPermissionError)
    finally:
        await client.aclose()
    plain = make_redis(
        RouterSettings(api_token="t", redis_url="redis+cluster://" + tls_cluster.nodes[0])
    )
    try:
        with pytest.raises(Exception):  # noqa: B017 - any failure to speak plaintext to TLS
            await plain.ping()
    finally:
        await plain.aclose()
