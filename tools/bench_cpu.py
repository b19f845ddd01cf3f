"""The router's CPU per event, piece by piece, without I/O: `python -m tools.bench_cpu`.

The same `overdue_notice` events as `make bench` (tools/bench.py), one borrower each, with
the `cn` contact rules: decode and validate a consumed batch (`read_batch`), make each first
move (`Machine.start`, with the phone numbers' time zones resolved afresh and then cached),
pack each transition with its records (`packing.pack`) and build the Lua call's arguments
(`Store.apply`, per 200). Each piece is timed in process CPU time (not wall time: the machine
may be shared), best of `--reps`. Run it under `valgrind --tool=callgrind` with `--n 0` and
`--n N` for instruction counts (their difference / N), which a loaded machine does not move.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any, TypeVar

from aiokafka.structs import ConsumerRecord, TopicPartition

from services.router.intake import MessageNeeds, read_batch
from services.router.ledger import LedgerView
from services.router.machine import Machine
from services.router.packing import pack
from services.router.plans import load_plans
from services.router.policy import load_policy
from services.router.policy.localtime import resolve_local
from services.router.store import Store
from shared.config import RouterSettings
from shared.gctune import tune_gc
from shared.templates import use_templates
from tools.bench import BENCH_CLOCK, notification

T = TypeVar("T")
APPLY_CHUNK = 200


def best_of(reps: int, fn: Callable[[], T]) -> tuple[float, T]:
    """(the least process CPU seconds of `reps` calls, the last result)."""
    best, result = float("inf"), None
    for _ in range(reps):
        started = time.process_time()
        result = fn()
        best = min(best, time.process_time() - started)
    assert result is not None
    return best, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3000, help="events")
    p.add_argument("--reps", type=int, default=7, help="timings per piece (the best counts)")
    args = p.parse_args()
    n = args.n
    s = RouterSettings(api_token="bench")
    plans = load_plans(s.plans_path)
    use_templates(s.templates_path)
    policy = load_policy("cn")
    machine = Machine(plans, policy, 0.0)
    store = Store(None, s.key_prefix, s.retention_s, s.timeline_max_records, policy.caps.horizon_s)  # type: ignore[arg-type]
    store._sha["apply"] = "0" * 40  # never sent: only the packed bytes are built
    tp = TopicPartition(s.topics.requested, 0)
    batch: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {
        tp: [
            ConsumerRecord(
                tp.topic, 0, i, 0, 0, f"cust-{i}".encode(), notification(i), None, 0, 0, []
            )
            for i in range(n)
        ]
    }
    tune_gc(s.gc_gen0_threshold)
    now = BENCH_CLOCK
    needs = MessageNeeds(plans)
    rows: list[tuple[str, float]] = []

    t, intake = best_of(args.reps, lambda: read_batch(batch, s.topics, plans, needs))
    rows.append(("decode and validate (read_batch)", t))
    requests = [r for _, _, r in intake.requests]

    def starts(fresh: bool) -> list[Any]:
        if fresh:
            resolve_local.cache_clear()
        return [machine.start(r, None, now, LedgerView()) for r in requests]

    t, _ = best_of(args.reps, lambda: starts(True))
    rows.append(("Machine.start, phone numbers not seen before", t))
    t, moves = best_of(args.reps, lambda: starts(False))
    rows.append(("Machine.start, phone numbers cached", t))
    prune = now.timestamp() - store.ledger_horizon_s

    def packs() -> list[Any]:
        return [pack(tp, st, fx, 0, s.topics, store.keys, 0, prune) for st, fx in moves]

    t, pending = best_of(args.reps, packs)
    rows.append(("pack a transition and its records", t))

    def applies() -> list[Any]:
        return [
            store.apply([p.transition for p in pending[i : i + APPLY_CHUNK]])
            for i in range(0, n, APPLY_CHUNK)
        ]

    t, _ = best_of(args.reps, applies)
    rows.append(("the Lua call's arguments (Store.apply)", t))
    print(f"| piece (N={n}, best of {args.reps}, process CPU) | µs per event |")
    print("|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds / max(n, 1) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
