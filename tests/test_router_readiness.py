"""The router's readiness tells the truth: while its batch loop cannot complete a batch that
is waiting (here: Redis refuses every transition), the readiness check reports it stalled
within `stall_after_s`, and ready again once batches complete."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError

from tests.router_support import Reader, engine_harness, value
from tests.test_router_engine import event

STALL_AFTER_S = 1.0


async def test_a_stalled_batch_loop_flips_readiness_and_recovers(
    broker: str, redis_server: str
) -> None:
    async with engine_harness(broker, redis_server, stall_after_s=STALL_AFTER_S) as h:
        check = h.engine.watchdog.check()
        assert await check() is None
        apply = h.engine.store.apply

        def refuse(*_: Any) -> bytes:
            raise RedisConnectionError("Redis unreachable (injected)")

        h.engine.store.apply = refuse  # type: ignore[method-assign]
        t = h.settings.topics
        try:
            async with Reader(broker, t.dispatch("push")) as r:
                await h.publish(
                    t.requested,
                    event("stall", "loan_approved", contacts={"push_tokens": ["tok"]}),
                )
                started = time.monotonic()
                # stalled with the record waiting, and (once a batch failed) the error named
                reason: str | None = None
                while reason is None or "Redis unreachable" not in reason:
                    assert time.monotonic() - started < STALL_AFTER_S + 10, f"not: {reason}"
                    reason = await check()
                    if reason is None or "Redis unreachable" not in reason:
                        await asyncio.sleep(0.1)
                assert "records waiting" in reason, reason
                h.engine.store.apply = apply  # type: ignore[method-assign]
                (d,) = await r.take(t.dispatch("push"), timeout_s=30)
                assert value(d)["notification_id"] == "stall"
        finally:  # never leave the loop failing: the harness waits for it to stop
            h.engine.store.apply = apply  # type: ignore[method-assign]
        deadline = time.monotonic() + 10
        while await check() is not None:
            assert time.monotonic() < deadline, "still reported stalled after recovering"
            await asyncio.sleep(0.1)
