"""The fault campaign (issue 9): a long mixed workload while faults are injected, then the
invariants checked from the topics and the sandbox ledger alone.

`python -m tools.chaos --notifications N --duration-s S --seed X` (`make chaos
CHAOS_ARGS=...`) starts its own stack (free ports, logs under .run/chaos-logs/), publishes
the customer profiles of the scenario mix, then N notification.requested/v1 events at a
steady rate over S seconds across every plan and sandbox path (tools/scenarios.py), while it
injects faults at moments drawn from the seed:

* SIGKILL of each service (router, sms, email, push, voice), restarted at once;
* SIGTERM of each (a graceful drain), restarted;
* Redis `kill -9`, restarted on the same port and data directory (append-only file on);
* the broker paused (SIGSTOP for `--pause-s`, default 30 s) and resumed (SIGCONT);
* a second router process joining, then leaving (SIGTERM): two consumer-group rebalances.

Faults on different targets may overlap; one target takes one fault at a time. A progress
line (published, final statuses, faults so far) is printed every few seconds. After the
load it waits until every notification has a final status (or `--deadline-s`), then checks:

* exactly one final status on `notifications.status` per notification (none: lost; more
  than one: duplicated);
* no provider send twice for one attempt (the sandbox ledger `sandbox:sends`, a count per
  channel:notification:leg:attempt, never above 1);
* every attempt of every final status present in `comms.audit` (an outcome record of that
  notification, channel and outcome);
* the final status is the scenario's expected one, or `failed` where a fault left an
  attempt's outcome unknown, counted apart: the channel had claimed it and not recorded the
  provider's answer (reported `failed` rather than sent again, docs/reliability.md fault 10),
  or no outcome reached the router before the step's timeout while that channel's service was
  killed or stopped or the broker paused (the plan then moves on rather than trying the
  channel again).

It prints the table (fault, count, lost, duplicated, time to recover, log volume) and exits
0 only when every invariant holds. Phone numbers and emails are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from services.router.machine import STEP_TIMEOUT
from shared.channel.claims import ORPHAN_DETAIL
from shared.config import Topics
from shared.kafka import GapGuard
from tools.devstack import DEFAULT_RUN_DIR, SERVICES, DevstackError, Service, Stack
from tools.devstack.guard import run_guarded
from tools.scenarios import SCENARIOS, Hop, Scenario, build_profile, new_run_id, phone

Print = Callable[[str], None]

DEFAULT_NOTIFICATIONS = 100_000
DEFAULT_DURATION_S = 1200.0
DEFAULT_PAUSE_S = 30.0
DEFAULT_DEADLINE_S = 600.0
PROGRESS_EVERY_S = 5.0
CUSTOMERS_PER_SCENARIO = 20
READY_TIMEOUT_S = 180.0
# The one plan the demo's scenarios reach only through 15-minute call-backs: here the
# borrower answers the first call, so it ends within the run on the real clock.
VERIFICATION_ANSWERED = Scenario(
    "verification-answered",
    "verification call-back, answered at once",
    "verification_callback",
    "delivered",
    (Hop("voice", "delivered"),),
    profile={"name": "He Ping", "phone": phone(10)},
    data={"loan_id": "LN-2026-0110"},
)
# Every plan and every sandbox path of the demo, except its call-backs that wait 15 minutes
# or 2 hours of real time (`verification-backups`).
MIX: tuple[Scenario, ...] = (
    *(s for s in SCENARIOS if s.type != "verification_callback"),
    VERIFICATION_ANSWERED,
)
KINDS = ("sigkill", "sigterm", "redis kill -9", "broker pause", "second router")


def _say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Fault:
    kind: str
    target: str
    due_s: float  # seconds after the load started
    started: float = 0.0  # time.monotonic()
    injected: float = 0.0  # the fault is in place (killed, paused, joined)
    ready: float | None = None  # the target serves again
    next_final: float | None = None  # the first final status read after `ready`
    log_bytes: int = 0  # written to the stack's logs from the fault to its recovery
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind} {self.target}" if self.kind in ("sigkill", "sigterm") else self.kind


@dataclass
class Seen:
    statuses: dict[str, list[tuple[float, dict[str, Any]]]] = field(default_factory=dict)
    audit: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)  # id → rec → ch, o
    finals: list[float] = field(default_factory=list)  # monotonic time of each final status


@dataclass
class Result:
    run_id: str
    published: dict[str, tuple[float, Scenario]]
    publish_failures: int
    seen: Seen
    faults: list[Fault]
    ledger: dict[str, int]
    log_sizes: dict[str, int]
    seconds: float
    load_started: float = 0.0  # time.monotonic() when the first event was published
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    # not the scenario's status because a kill left an attempt's outcome unknown (a claim
    # without a recorded provider answer, reported `failed`: docs/reliability.md, fault 10)
    changed_by_fault: list[str] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)
    sent_twice: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.unexpected
            or self.unaudited
            or self.sent_twice
            or any(f.error for f in self.faults)
        )


def fault_plan(
    rng: random.Random,
    duration_s: float,
    *,
    sigkills: int,
    sigterms: int,
    redis_kills: int,
    broker_pauses: int,
    router_joins: int,
    services: Sequence[str] = SERVICES,
) -> list[Fault]:
    """Every fault at a moment drawn from `rng` within the load (5 %–90 % of it), in order."""
    wanted: list[tuple[str, str, int]] = [
        *(("sigkill", s, sigkills) for s in services),
        *(("sigterm", s, sigterms) for s in services),
        ("redis kill -9", "redis", redis_kills),
        ("broker pause", "broker", broker_pauses),
        ("second router", "router-2", router_joins),
    ]
    faults = [
        Fault(kind, target, rng.uniform(0.05, 0.9) * duration_s)
        for kind, target, count in wanted
        for _ in range(count)
    ]
    return sorted(faults, key=lambda f: f.due_s)


def build_event(s: Scenario, nid: str, customer: str, now: datetime) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema": "notification.requested/v1",
        "id": nid,
        "type": s.type,
        "customer_id": customer,
        "occurred_at": now.isoformat(timespec="seconds"),
        "data": dict(s.data),
    }
    if s.contacts is not None:
        event["contacts"] = dict(s.contacts)
    if s.expires_in_s is not None:
        event["expires_at"] = (now + timedelta(seconds=s.expires_in_s)).isoformat(
            timespec="seconds"
        )
    return event


async def serving(svc: Service, deadline_s: float) -> None:
    """Until `svc` answers /readyz 200. Unlike `Service.wait_ready`, a process that is not
    running is waited for too: another fault may be restarting it."""
    deadline = time.monotonic() + deadline_s
    while not (svc.running and await svc.probe()):
        if time.monotonic() > deadline:
            raise DevstackError(f"{svc.name} not ready after {deadline_s:.0f} s")
        await asyncio.sleep(0.2)


def log_bytes(log_dir: Path) -> int:
    return sum(p.stat().st_size for p in log_dir.glob("*.log") if p.is_file())


class Campaign:
    """One run: the stack, the load, the faults, the reader."""

    def __init__(
        self,
        stack: Stack,
        *,
        notifications: int,
        duration_s: float,
        seed: int,
        pause_s: float,
        deadline_s: float,
        faults: list[Fault],
        say: Print = _say,
    ) -> None:
        self.stack = stack
        self.n = notifications
        self.duration_s = duration_s
        self.rng = random.Random(seed)
        self.pause_s = pause_s
        self.deadline_s = deadline_s
        self.faults = faults
        self.say = say
        self.run_id = new_run_id()
        self.topics = Topics()
        self.seen = Seen()
        self.published: dict[str, tuple[float, Scenario]] = {}
        self.publish_failures = 0
        self.locks: dict[str, asyncio.Lock] = {}
        self.done_faults = 0
        self.second_router: Service | None = None
        self.load_started = 0.0
        self.expected = notifications + 1  # set to what was published once the load is out
        self.all_final = asyncio.Event()

    # -- the reader --
    async def read(self, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        t = self.topics
        consumer = AIOKafkaConsumer(
            t.status,
            t.audit,
            bootstrap_servers=self.stack.bootstrap,
            group_id=None,
            client_id=f"tongda-chaos-{self.run_id}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=200,
            request_timeout_ms=120_000,
        )
        await consumer.start()
        # statuses and audit records fill every offset: one the broker skipped is read again
        gaps = GapGuard(consumer, [t.status, t.audit], "tongda-chaos", 30.0)
        prefix = f"chaos-{self.run_id}-"
        try:
            while not stop.is_set():
                batch = await gaps.check(await consumer.getmany(timeout_ms=500, max_records=5000))
                now = time.monotonic()
                for records in batch.values():
                    for rec in records:
                        try:
                            value = orjson.loads(rec.value)
                        except orjson.JSONDecodeError:
                            continue
                        nid = str(value.get("notification_id") or "")
                        if not nid.startswith(prefix):
                            continue
                        if rec.topic == t.status:
                            self.seen.statuses.setdefault(nid, []).append((now, value))
                            self.seen.finals.append(now)
                            if len(self.seen.statuses) >= self.expected:
                                self.all_final.set()
                        elif value.get("outcome"):
                            self.seen.audit.setdefault(nid, {})[str(value.get("record_id"))] = (
                                str(value.get("channel")),
                                str(value.get("outcome")),
                            )
        finally:
            await consumer.stop()

    # -- the load --
    async def publish(self, load_started: asyncio.Event) -> None:
        from aiokafka import AIOKafkaProducer

        from tools.demo import wait_consumed

        t = self.topics
        producer = AIOKafkaProducer(
            bootstrap_servers=self.stack.bootstrap,
            client_id=f"tongda-chaos-{self.run_id}",
            acks="all",
            enable_idempotence=False,
            request_timeout_ms=120_000,
            linger_ms=5,
        )
        await producer.start()
        try:
            now = datetime.now(UTC)
            customers = [
                (s, f"chaos-{self.run_id}-{s.name}-{k}")
                for s in MIX
                for k in range(CUSTOMERS_PER_SCENARIO)
            ]
            await asyncio.gather(
                *(
                    producer.send_and_wait(
                        t.profiles,
                        orjson.dumps({**build_profile(s, self.run_id, now), "customer_id": c}),
                        key=c.encode(),
                    )
                    for s, c in customers
                    if s.profile is not None
                )
            )
            await wait_consumed(self.stack.bootstrap, "tongda-router-batch", t.profiles, 60.0)
            self.say(f"published {len(customers)} customer profiles; the load starts")
            self.load_started = time.monotonic()
            load_started.set()
            pending: set[asyncio.Future[Any]] = set()
            for i in range(self.n):
                due = self.load_started + i * self.duration_s / self.n
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                s = MIX[i % len(MIX)]
                k = (i // len(MIX)) % CUSTOMERS_PER_SCENARIO
                customer = f"chaos-{self.run_id}-{s.name}-{k}"
                nid = f"chaos-{self.run_id}-{i:06d}-{s.name}"
                value = orjson.dumps(build_event(s, nid, customer, datetime.now(UTC)))
                for _ in range(s.publish_times):
                    fut = await producer.send(t.requested, value, key=customer.encode())
                    pending.add(fut)
                    fut.add_done_callback(pending.discard)
                self.published[nid] = (time.monotonic(), s)
            results = await asyncio.gather(*pending, return_exceptions=True)
            self.publish_failures += sum(isinstance(r, BaseException) for r in results)
        finally:
            await producer.stop()

    # -- the faults --
    async def inject(self, load_started: asyncio.Event) -> None:
        await load_started.wait()
        tasks = []
        for fault in self.faults:
            delay = self.load_started + fault.due_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._guarded(fault)))
        await asyncio.gather(*tasks)

    async def _guarded(self, fault: Fault) -> None:
        lock = self.locks.setdefault(fault.target, asyncio.Lock())
        async with lock:
            fault.started = time.monotonic()
            before = log_bytes(self.stack.log_dir)
            try:
                await self._one(fault)
            except Exception as exc:  # reported in the table; the run goes on
                fault.error = fault.error or f"{type(exc).__name__}: {exc}"[:300]
                self.say(f"fault {fault.name} failed: {fault.error}")
            fault.log_bytes = log_bytes(self.stack.log_dir) - before
            self.done_faults += 1

    async def _one(self, fault: Fault) -> None:
        stack = self.stack
        if fault.kind == "sigkill":
            svc = stack.service(fault.target)
            svc.kill()
            fault.injected = time.monotonic()
            await asyncio.sleep(0)
            await self._restart(svc, fault)
        elif fault.kind == "sigterm":
            svc = stack.service(fault.target)
            await svc.stop()
            fault.injected = time.monotonic()
            await self._restart(svc, fault)
        elif fault.kind == "redis kill -9":
            stack.redis.kill()
            fault.injected = time.monotonic()
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
            stack.redis.start()  # same port, same data directory: the AOF comes back
        elif fault.kind == "broker pause":
            stack.broker.send(signal.SIGSTOP)
            fault.injected = time.monotonic()
            try:
                await asyncio.sleep(self.pause_s)
            finally:
                stack.broker.send(signal.SIGCONT)
        elif fault.kind == "second router":
            env = dict(stack.service_env("router"))
            env["TONGDA_FAUST_DATADIR"] = str(stack.data_dir.resolve() / "router-2")
            router2 = Service("router", stack.log_dir / "router-2.log", env=env)
            self.second_router = router2
            try:
                await router2.start(READY_TIMEOUT_S)
                fault.injected = time.monotonic()
                await asyncio.sleep(self.rng.uniform(10.0, 30.0))
            finally:
                await router2.stop()
                self.second_router = None
        fault.ready = time.monotonic()
        if fault.kind in ("sigkill", "sigterm"):
            return
        # The broker and Redis have no /readyz of ours: recovered once every service is.
        await asyncio.gather(*(serving(s, READY_TIMEOUT_S) for s in stack.services.values()))
        fault.ready = time.monotonic()

    async def _restart(self, svc: Service, fault: Fault) -> None:
        """Start `svc` again; a start that never gets ready is recorded in `fault.error` (the
        run fails) and the process is killed and started once more, so one hung start does
        not stop the rest of the campaign."""
        for attempt in range(1, 4):
            try:
                await svc.start(READY_TIMEOUT_S)
                return
            except DevstackError as exc:
                first = str(exc).splitlines()[0][:200]
                fault.error = fault.error or f"start {attempt} of {svc.name} failed: {first}"
                self.say(f"{fault.name}: start {attempt} failed ({first}); starting again")
        raise DevstackError(f"{svc.name} did not start in 3 attempts")

    # -- the run --
    async def progress(self, stop: asyncio.Event, started: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROGRESS_EVERY_S)
            final = len(self.seen.statuses)
            self.say(
                f"{time.monotonic() - started:6.0f} s  published {len(self.published)}/{self.n}"
                f"  final {final}  faults {self.done_faults}/{len(self.faults)}"
            )

    async def run(self) -> Result:
        started = time.monotonic()
        stop_reader = asyncio.Event()
        load_started = asyncio.Event()
        reader = asyncio.create_task(self.read(stop_reader))
        ticker = asyncio.create_task(self.progress(stop_reader, started))

        injector = asyncio.create_task(self.inject(load_started))
        try:
            await self.publish(load_started)
            self.say(f"load published ({len(self.published)} notifications); faults finishing")
            await injector
            deadline = time.monotonic() + self.deadline_s
            self.expected = len(self.published)
            if len(self.seen.statuses) < self.expected:
                await asyncio.wait(
                    [reader, asyncio.create_task(self.all_final.wait())],
                    timeout=max(0.0, deadline - time.monotonic()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if reader.done():
                    reader.result()
            await asyncio.sleep(3.0)  # linger: a duplicate would come right behind
        finally:
            injector.cancel()
            stop_reader.set()
            await asyncio.gather(reader, ticker, injector, return_exceptions=True)
        ledger = await self.read_ledger()
        for fault in self.faults:
            if fault.ready is not None:
                fault.next_final = next((t for t in self.seen.finals if t >= fault.ready), None)
        result = Result(
            run_id=self.run_id,
            published=self.published,
            publish_failures=self.publish_failures,
            seen=self.seen,
            faults=self.faults,
            ledger=ledger,
            log_sizes={p.name: p.stat().st_size for p in sorted(self.stack.log_dir.glob("*.log"))},
            seconds=time.monotonic() - started,
            load_started=self.load_started,
        )
        check(result)
        return result

    async def read_ledger(self) -> dict[str, int]:
        from redis.asyncio import Redis

        client = Redis.from_url(self.stack.redis_url)
        try:
            raw = await client.hgetall(f"{self.stack.settings().key_prefix}sandbox:sends")
        finally:
            await client.aclose()
        tag = f":chaos-{self.run_id}-"
        fields = {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}
        return {k: v for k, v in fields.items() if tag in k}


def check(r: Result) -> None:
    """Fill the result's lists of what broke an invariant."""
    for nid, (_, s) in sorted(r.published.items()):
        got = r.seen.statuses.get(nid, [])
        if not got:
            r.lost.append(nid)
            continue
        if len(got) > 1:
            r.duplicated.append(nid)
        received, status = got[0]
        if status.get("status") != s.expected_status:
            orphaned = any(
                a.get("outcome") == "failed" and a.get("detail") == ORPHAN_DETAIL
                for a in status.get("attempts") or []
            )
            if status.get("status") == "failed" and (
                orphaned or _timed_out_while_faulted(r, nid, status, received)
            ):
                r.changed_by_fault.append(nid)
            else:
                r.unexpected.append(nid)
        want = Counter(
            (str(a.get("channel")), str(a.get("outcome"))) for a in status.get("attempts") or []
        )
        have = Counter(r.seen.audit.get(nid, {}).values())
        if any(have[k] < c for k, c in want.items()):
            r.unaudited.append(nid)
    r.sent_twice = sorted(k for k, v in r.ledger.items() if v > 1)


def _timed_out_while_faulted(r: Result, nid: str, status: dict[str, Any], received: float) -> bool:
    """The last attempt ended by the router's step timeout (no outcome reached it in time, so
    whether the provider got it is unknown) while that channel's service was killed or
    stopped, or the broker paused, during the notification's life."""
    attempts = status.get("attempts") or []
    if not attempts:
        return False
    last = attempts[-1]
    if last.get("outcome") != "failed" or not str(last.get("detail", "")).endswith(STEP_TIMEOUT):
        return False
    born = r.published[nid][0]
    return any(
        f.started
        and born <= f.started <= received
        and (
            (f.kind in ("sigkill", "sigterm") and f.target == last.get("channel"))
            or f.kind == "broker pause"
        )
        for f in r.faults
    )


def _blame(r: Result, when: float) -> Fault | None:
    """The last fault started before `when`."""
    before = [f for f in r.faults if f.started and f.started <= when]
    return max(before, key=lambda f: f.started) if before else None


def _secs(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def table(r: Result) -> str:
    """The markdown table: one row per fault kind (and target), then the totals."""
    lost_by: Counter[str] = Counter()
    dup_by: Counter[str] = Counter()
    for nid in r.lost:
        f = _blame(r, r.published[nid][0])
        lost_by[f.name if f else "(no fault before)"] += 1
    for nid in r.duplicated:
        f = _blame(r, r.seen.statuses[nid][1][0])
        dup_by[f.name if f else "(no fault before)"] += 1
    rows = [
        "| fault | count | lost | duplicated | ready again, s (median / max) "
        "| next final status, s (median / max) | log bytes per fault (median / max) | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(f.name for f in sorted(r.faults, key=lambda f: KINDS.index(f.kind))))
    for name in names:
        fs = [f for f in r.faults if f.name == name and f.started]
        ready = [f.ready - f.started for f in fs if f.ready is not None]
        nxt = [f.next_final - f.started for f in fs if f.next_final is not None]
        logs = [f.log_bytes for f in fs]
        log_txt = f"{statistics.median(logs):,.0f} / {max(logs):,}" if logs else "-"
        errors = sum(1 for f in fs if f.error)
        rows.append(
            f"| {name} | {len(fs)} | {lost_by[name]} | {dup_by[name]} | {_secs(ready)} "
            f"| {_secs(nxt)} | {log_txt} | {errors} |"
        )
    if lost_by["(no fault before)"] or dup_by["(no fault before)"]:
        rows.append(
            f"| (no fault before) | - | {lost_by['(no fault before)']} "
            f"| {dup_by['(no fault before)']} | - | - | - | - |"
        )
    total = sum(1 for f in r.faults if f.started)
    rows.append(
        f"| **all** | {total} | {len(r.lost)} | {len(r.duplicated)} | - | - "
        f"| {sum(r.log_sizes.values()):,} in all | {sum(1 for f in r.faults if f.error)} |"
    )
    return "\n".join(rows)


def _status_text(r: Result, nid: str, t: float, v: dict[str, Any]) -> str:
    path = " → ".join(f"{a.get('channel')} {a.get('outcome')}" for a in v.get("attempts") or [])
    return f"{v.get('status')} at +{t - r.published[nid][0]:.1f} s via {path or '(no attempt)'}"


def summary(r: Result) -> str:
    n = len(r.published)
    by_status = Counter(v[0][1].get("status") for v in r.seen.statuses.values())
    lines = [
        "",
        f"Fault campaign (run {r.run_id}, {r.seconds:.0f} s): {n} notifications published "
        f"({r.publish_failures} publish errors), {len(r.seen.statuses)} with a final status "
        f"({dict(by_status)})",
        "",
        table(r),
        "",
        "Logs: " + ", ".join(f"{k} {v:,} B" for k, v in r.log_sizes.items()),
        "",
        "Invariants",
    ]

    def line(label: str, bad: list[str]) -> None:
        mark = "ok" if not bad else "XX"
        sample = f": e.g. {', '.join(bad[:5])}" if bad else ""
        lines.append(f"  {mark:<3}{label}: {len(bad)} broken{sample}")

    line("exactly one final status (lost)", r.lost)
    line("exactly one final status (duplicated)", r.duplicated)
    line("no provider send twice for one attempt (sandbox ledger)", r.sent_twice)
    line("every attempt of a final status in comms.audit", r.unaudited)
    line("final status as the scenario expects", r.unexpected)
    if r.changed_by_fault:
        lines.append(
            f"     ({len(r.changed_by_fault)} more ended `failed` because a fault left an "
            "attempt's outcome unknown (a claim without an answer, or no outcome before the "
            "step timeout while the channel was down), as designed: e.g. "
            f"{', '.join(r.changed_by_fault[:3])})"
        )
    for nid in (r.duplicated + r.unexpected + r.unaudited)[:8]:
        got = r.seen.statuses.get(nid, [])
        lines.append(f"     {nid}: " + "; ".join(_status_text(r, nid, t, v) for t, v in got))
    failed = [f for f in r.faults if f.error]
    lines.append(
        f"  {'ok' if not failed else 'XX':<3}every faulted process serving again: "
        f"{len(failed)} broken"
    )
    for f in failed[:5]:
        lines.append(f"     {f.name} at +{f.due_s:.0f} s: {f.error}")
    lines += ["", "Faults (seconds after the load started: ready again, next final status)"]
    t0 = r.load_started
    for f in sorted((f for f in r.faults if f.started), key=lambda f: f.started):
        ready = f"{f.ready - f.started:.1f}" if f.ready is not None else "-"
        nxt = f"{f.next_final - f.started:.1f}" if f.next_final is not None else "-"
        err = f"  ERROR {f.error}" if f.error else ""
        lines.append(f"  +{f.started - t0:6.1f}  {f.name:<16} {ready:>6} {nxt:>6}{err}")
    lines += ["", "PASS" if r.ok else "FAIL"]
    return "\n".join(lines)


async def run_campaign(
    *,
    notifications: int,
    duration_s: float,
    seed: int,
    run_dir: Path = DEFAULT_RUN_DIR,
    pause_s: float = DEFAULT_PAUSE_S,
    deadline_s: float = DEFAULT_DEADLINE_S,
    sigkills: int = 20,
    sigterms: int = 3,
    redis_kills: int = 5,
    broker_pauses: int = 3,
    router_joins: int = 3,
    say: Print = _say,
) -> Result:
    rng = random.Random(seed)
    faults = fault_plan(
        rng,
        duration_s,
        sigkills=sigkills,
        sigterms=sigterms,
        redis_kills=redis_kills,
        broker_pauses=broker_pauses,
        router_joins=router_joins,
    )
    stack = Stack(
        run_dir=run_dir,
        log_dir=run_dir / "chaos-logs",
        data_dir=run_dir / "chaos-data",
        ready_timeout_s=READY_TIMEOUT_S,
        policy_preset="none",  # caps and calling windows would make the end depend on the hour
        sandbox_time_scale=0.05,
        extra_env={"TONGDA_SCHEDULER_LEASE_S": "5"},
        progress=say,
    )
    say(
        f"chaos: {notifications} notifications over {duration_s:.0f} s, {len(faults)} faults "
        f"(seed {seed}); logs in {stack.log_dir}/"
    )
    async with stack:
        campaign = Campaign(
            stack,
            notifications=notifications,
            duration_s=duration_s,
            seed=rng.randrange(2**32),
            pause_s=pause_s,
            deadline_s=deadline_s,
            faults=faults,
            say=say,
        )
        return await campaign.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--notifications", type=int, default=DEFAULT_NOTIFICATIONS)
    parser.add_argument("--duration-s", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument("--pause-s", type=float, default=DEFAULT_PAUSE_S, help="broker pause")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=DEFAULT_DEADLINE_S,
        help="after the load, the longest wait for every final status",
    )
    parser.add_argument("--sigkills", type=int, default=20, help="SIGKILLs per service")
    parser.add_argument("--sigterms", type=int, default=3, help="SIGTERMs per service")
    parser.add_argument("--redis-kills", type=int, default=5)
    parser.add_argument("--broker-pauses", type=int, default=3)
    parser.add_argument("--router-joins", type=int, default=3, help="second router join+leave")
    args = parser.parse_args(argv)

    async def campaign() -> int:
        result = await run_campaign(
            notifications=args.notifications,
            duration_s=args.duration_s,
            seed=args.seed,
            run_dir=args.run_dir,
            pause_s=args.pause_s,
            deadline_s=args.deadline_s,
            sigkills=args.sigkills,
            sigterms=args.sigterms,
            redis_kills=args.redis_kills,
            broker_pauses=args.broker_pauses,
            router_joins=args.router_joins,
        )
        print(summary(result), flush=True)
        return 0 if result.ok else 1

    return run_guarded("chaos", campaign)


if __name__ == "__main__":
    sys.exit(main())
