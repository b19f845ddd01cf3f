"""tools.regroup_keys: a deployment's keys moved from the layout before groups (no hash tags)
to 64 groups, then to 8 (groups merging), while a notification waits for its call's outcome:
the router, switched to the new layout, finishes it."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from services.router.outbox import OutRecord
from services.router.store import Keys
from tests.router_support import Reader, engine_harness, value
from tests.test_router_engine import answer, event
from tools.regroup_keys import regroup


async def test_keys_move_to_groups_and_routing_goes_on(broker: str, redis_server: str) -> None:
    async with engine_harness(broker, redis_server, redis_key_groups=0) as h:
        t = h.settings.topics
        prefix = h.settings.key_prefix
        flat = h.store.keys
        assert flat.state("rg1", "c1") == f"{prefix}n:rg1"  # no tags
        async with Reader(broker, t.dispatch("voice"), t.status) as r:
            await h.publish(t.requested, event("rg1", contacts={"phone": "+8613800000001"}))
            (call,) = await r.take(t.dispatch("voice"))
            # an outbox entry left by a router that stopped before the broker acknowledged it
            tp = TopicPartition(t.requested, 1)
            rec = OutRecord("rg1/9/0", t.audit, b"c1", b"{}")
            await h.redis.hset(flat.outbox(tp.topic, tp.partition, "c1"), rec.effect_id, rec.pack())
            assert await h.redis.zcard(flat.timers("c1")) == 1  # the call's step timeout

            moved = await regroup(h.redis, prefix, 0, 64)
            assert (moved.timers, moved.outbox, moved.skipped) == (1, 1, [])
            grouped = Keys(prefix, 64)
            assert grouped.state("rg1", "c1").startswith(f"{prefix}{{g")
            for old_name in (flat.state("rg1", "c1"), flat.customer_notifications("c1")):
                assert not await h.redis.exists(old_name)
            await regroup(h.redis, prefix, 64, 8)  # fewer groups: several merge into one
            keys = Keys(prefix, 8)
            # (no timeline yet: the call's outcome is the first record)
            names = [keys.state("rg1", "c1"), keys.customer_notifications("c1")]
            assert await h.redis.exists(*names) == 2
            assert await h.redis.zcard(keys.timers("c1")) == 1
            box = keys.outbox(tp.topic, tp.partition, "c1")
            assert await h.redis.hget(box, rec.effect_id) == rec.pack()
            assert 0 < await h.redis.ttl(keys.state("rg1", "c1")) <= h.settings.retention_s

            # the router, now with 8 groups, finishes the notification
            for holder in (h.store, h.outbox, h.engine.senders, h.desk):
                holder.keys = keys  # type: ignore[misc]
            await answer(h, value(call), "delivered")
            (status,) = await r.take(t.status)
            assert (value(status)["notification_id"], value(status)["status"]) == (
                "rg1",
                "delivered",
            )
        assert await h.redis.zcard(keys.timers("c1")) == 0
        assert await h.redis.llen(keys.timeline("c1")) == 1  # the call's record
        assert not await h.redis.exists(flat.timers("c1"), flat.outbox(tp.topic, 1, "c1"))
