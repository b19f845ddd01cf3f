"""The scripted demo: borrower events in, one final status per notification out.

`python -m tools.demo` starts its own stack (free ports, logs under .run/demo-logs/),
publishes the customer profiles of tools/scenarios.py to `customers.profiles`, then their
notification.requested/v1 events (and a few invalid ones) to `notifications.requested`,
reads `notifications.status` and `notifications.deadletter` until every notification has
its final status; then borrowers write back through the sandbox's `/sandbox/inbound`
(tools/conversations.py: replies, escalations, an opt-out, a survey and its score). It prints
a summary and stops everything, also on Ctrl-C or failure.

`--providers local` (`make demo PROVIDERS=local`) runs the channels' real providers
(SMPP with Twilio as failover, SMTP, FCM HTTP v1, SIP) against local peers started with the
stack instead of the sandbox (tools/devstack/peers.py); the scenarios and the expected
outcomes are the same (the conversations, which need the sandbox's `/sandbox/inbound`, are
not played). The summary names the provider that took each channel's attempts.

`--bootstrap HOST:PORT` runs the same script against a stack that is already up (e.g.
`make up`; ids are unique per run). Exit status: 0 when every notification reached its
expected final status exactly once, every invalid event was dead-lettered and every
conversation went as expected (with `--bootstrap`, played when TONGDA_SMS_URL,
TONGDA_VOICE_URL, TONGDA_ROUTER_URL and TONGDA_API_TOKEN are set, e.g. from .run/env), else 1.
Phone numbers and emails are masked in everything printed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from shared.clock import Clock
from shared.config import CommonSettings, RouterSettings, Topics
from shared.kafka import GapGuard
from shared.masking import scrub
from tools.conversations import (
    CONVERSATIONS,
    ConversationResult,
    Endpoints,
    conversations_summary,
    run_conversations,
)
from tools.devstack import DEFAULT_RUN_DIR, Stack
from tools.devstack.guard import run_guarded
from tools.scenarios import (
    DEMO_START,
    INVALID,
    RULES,
    SCENARIOS,
    InvalidScenario,
    Scenario,
    build_event,
    build_invalid,
    build_profile,
    new_run_id,
    path_text,
)

Print = Callable[[str], None]

DEFAULT_DEADLINE_S = 90.0
LOCAL_DEADLINE_S = 180.0  # real calls and real bounces take real seconds
# The demo's clock: 22:30 in Shanghai when the stack is ready, 2,000 times faster than real
# time (the night passes in 17 s, a 15-minute call-back in 0.45 s).
DEFAULT_TIME_SCALE = 0.0005
DEFAULT_SETTLE_S = 30.0  # the longest wait for the router to take in the profiles
DEFAULT_LINGER_S = 2.0


def _say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Seen:
    """What the demo read back for its run."""

    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by notification id
    decisions: dict[str, list[str]] = field(default_factory=dict)  # audit decisions, by id
    deadletters: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # by record key
    stray: int = 0  # records of this run that match no scenario


@dataclass(frozen=True)
class NotificationResult:
    scenario: Scenario
    statuses: tuple[dict[str, Any], ...]
    decisions: tuple[str, ...] = ()

    @property
    def status(self) -> str | None:
        return str(self.statuses[0].get("status")) if self.statuses else None

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return list(self.statuses[0].get("attempts") or []) if self.statuses else []

    @property
    def path(self) -> list[tuple[str, str]]:
        return [(str(a.get("channel")), str(a.get("outcome"))) for a in self.attempts]

    @property
    def ok(self) -> bool:
        s = self.scenario
        return (
            len(self.statuses) == 1
            and self.status == s.expected_status
            and (self.path_ok or not s.strict_path)
            and not self.missing_decisions
        )

    @property
    def path_ok(self) -> bool:
        return self.scenario.path_matches(self.path)

    @property
    def missing_decisions(self) -> list[str]:
        return [
            want
            for want in self.scenario.expected_decisions
            if not any(d.startswith(want) for d in self.decisions)
        ]


@dataclass(frozen=True)
class DeadLetterResult:
    scenario: InvalidScenario
    records: tuple[dict[str, str], ...]

    @property
    def ok(self) -> bool:
        want = self.scenario.expected_error
        return bool(self.records) and (want is None or self.records[0].get("error") == want)


@dataclass(frozen=True)
class DemoResult:
    run_id: str
    notifications: tuple[NotificationResult, ...]
    deadletters: tuple[DeadLetterResult, ...]
    seen: Seen
    seconds: float
    conversations: tuple[ConversationResult, ...] = ()  # tools/conversations.py, when played

    @property
    def ok(self) -> bool:
        return (
            all(n.ok for n in self.notifications)
            and all(d.ok for d in self.deadletters)
            and all(c.ok for c in self.conversations)
            and not self.seen.stray
        )


async def wait_consumed(bootstrap: str, group: str, topic: str, deadline_s: float) -> None:
    """Wait until consumer group `group` has committed every partition of `topic` up to
    its end offset as it is now."""
    await wait_committed(bootstrap, group, await end_offsets(bootstrap, topic), deadline_s)


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Each non-empty partition of `topic` and its high-water mark now (`high_watermarks`)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await reader.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())]
        return {tp: off for tp, off in (await high_watermarks(reader, tps)).items() if off > 0}
    finally:
        await reader.stop()


async def wait_committed(
    bootstrap: str,
    group: str,
    ends: dict[TopicPartition, int],
    deadline_s: float,
    poll_s: float = 0.1,
) -> None:
    """Wait until consumer group `group` has committed each partition up to its offset in
    `ends` (asked every `poll_s`)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            committed = await admin.list_consumer_group_offsets(group, partitions=list(ends))
            behind = [
                tp for tp, end in ends.items() if tp not in committed or committed[tp].offset < end
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                topics = ", ".join(sorted({tp.topic for tp in behind}))
                raise TimeoutError(
                    f"group {group} has not consumed {topics} within {deadline_s:.0f} s"
                )
            await asyncio.sleep(poll_s)
    finally:
        await admin.close()


async def high_watermarks(
    reader: AIOKafkaConsumer, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """Each partition's high-water mark (the offset after its last record), from a fetch.
    ListOffsets (`end_offsets`) gives it on Kafka, but Tansu 0.6.0 answers one past the
    first offset of the partition's last batch; a fetch from there returns that batch and
    the true mark in its response, on either broker."""
    lower = await reader.end_offsets(list(tps))
    reader.assign(list(tps))
    for tp, end in lower.items():
        reader.seek(tp, max(end - 1, 0))
    marks: dict[TopicPartition, int] = {}
    deadline = time.monotonic() + 10
    while len(marks) < len(tps) and time.monotonic() < deadline:
        await reader.getmany(timeout_ms=200)
        for tp in tps:
            mark = reader.highwater(tp)
            if mark is not None:
                marks[tp] = max(mark, lower[tp])
    return {tp: marks.get(tp, lower[tp]) for tp in tps}


def _headers(raw: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (raw or ())}


async def run_demo(
    bootstrap: str,
    *,
    run_id: str | None = None,
    topics: Topics | None = None,
    deadline_s: float = DEFAULT_DEADLINE_S,
    settle_s: float = DEFAULT_SETTLE_S,
    linger_s: float = DEFAULT_LINGER_S,
    say: Print | None = _say,
    scenarios: Sequence[Scenario] = SCENARIOS,
    invalid: Sequence[InvalidScenario] = INVALID,
    clock: Clock | None = None,
) -> DemoResult:
    """Publish the scenarios to the broker at `bootstrap` and collect what comes back.
    `clock`: the stack's (events carry its time); the real clock by default."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    run_id = run_id or new_run_id()
    t = topics or Topics()
    note = say or (lambda _: None)
    now = (clock or Clock.real()).now()
    prefix = f"demo-{run_id}-"
    by_id = {s.notification_id(run_id): s for s in scenarios}
    invalid_keys = {s.key(run_id): s for s in invalid}
    seen = Seen()
    started = time.monotonic()

    consumer = AIOKafkaConsumer(
        t.status,
        t.deadletter,
        t.audit,
        bootstrap_servers=bootstrap,
        group_id=None,
        client_id=f"tongda-demo-{run_id}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
    )
    # tongda's own topics hold a record at every offset: one the broker skipped is read again
    gaps = GapGuard(consumer, [t.status, t.deadletter, t.audit], "tongda-demo", 30.0)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=f"tongda-demo-{run_id}",
        acks="all",
        enable_idempotence=False,
    )
    await consumer.start()
    try:
        await producer.start()
        try:
            profiles = [
                (s.customer_id(run_id), build_profile(s, run_id, now))
                for s in scenarios
                if s.profile is not None
            ]
            await asyncio.gather(
                *(
                    producer.send_and_wait(t.profiles, orjson.dumps(p), key=cid.encode())
                    for cid, p in profiles
                )
            )
            note(f"published {len(profiles)} customer profiles to {t.profiles}")
            # Profiles and events are different topics: wait until the router has committed
            # past the profiles (it commits after writing them), so routing sees them.
            await wait_consumed(bootstrap, RouterSettings().consumer_group, t.profiles, settle_s)
            sent = 0
            for s in scenarios:
                value = orjson.dumps(build_event(s, run_id, now))
                for _ in range(s.publish_times):
                    await producer.send_and_wait(
                        t.requested, value, key=s.customer_id(run_id).encode()
                    )
                    sent += 1
            for inv in invalid:
                await producer.send_and_wait(
                    t.requested, build_invalid(inv, run_id, now), key=inv.key(run_id).encode()
                )
            note(
                f"published {sent} events ({len(scenarios)} notifications) and "
                f"{len(invalid)} invalid ones to {t.requested} (run {run_id})"
            )
        finally:
            await producer.stop()

        def progress() -> tuple[int, int]:
            final = sum(1 for nid in by_id if seen.statuses.get(nid))
            dead = sum(1 for k in invalid_keys if seen.deadletters.get(k))
            return final, dead

        deadline = time.monotonic() + deadline_s
        complete_at: float | None = None
        last_note = 0.0
        while True:
            now_m = time.monotonic()
            final, dead = progress()
            if complete_at is None and final == len(by_id) and dead == len(invalid_keys):
                complete_at = now_m  # all in: linger a little to catch duplicates
            if complete_at is not None and now_m - complete_at >= linger_s:
                break
            if now_m > deadline:
                note(f"deadline of {deadline_s:.0f} s passed")
                break
            if now_m - last_note >= 2.0:
                note(
                    f"{final}/{len(by_id)} final, {dead}/{len(invalid_keys)} dead letters … "
                    f"{now_m - started:.0f} s"
                )
                last_note = now_m
            batch = await gaps.check(await consumer.getmany(timeout_ms=200))
            for records in batch.values():
                for rec in records:
                    _collect(rec, t, prefix, by_id, invalid_keys, seen)
    finally:
        await consumer.stop()

    return DemoResult(
        run_id=run_id,
        notifications=tuple(
            NotificationResult(
                s, tuple(seen.statuses.get(nid, ())), tuple(seen.decisions.get(nid, ()))
            )
            for nid, s in by_id.items()
        ),
        deadletters=tuple(
            DeadLetterResult(s, tuple(seen.deadletters.get(k, ()))) for k, s in invalid_keys.items()
        ),
        seen=seen,
        seconds=time.monotonic() - started,
    )


def _collect(
    rec: Any,
    t: Topics,
    prefix: str,
    by_id: dict[str, Scenario],
    invalid_keys: dict[str, InvalidScenario],
    seen: Seen,
) -> None:
    if rec.topic == t.audit:
        try:
            record = orjson.loads(rec.value)
        except orjson.JSONDecodeError:
            return
        nid = str(record.get("notification_id") or "")
        if nid in by_id and record.get("decision"):
            seen.decisions.setdefault(nid, []).append(str(record["decision"]))
        return
    if rec.topic == t.status:
        try:
            value = orjson.loads(rec.value)
        except orjson.JSONDecodeError:
            return
        nid = str(value.get("notification_id", ""))
        if nid in by_id:
            seen.statuses.setdefault(nid, []).append(value)
        elif nid.startswith(prefix):
            seen.stray += 1  # e.g. a status for an event that should have been dead-lettered
    elif rec.topic == t.deadletter:
        key = rec.key.decode("utf-8", "replace") if rec.key else ""
        if key in invalid_keys:
            seen.deadletters.setdefault(key, []).append(_headers(rec.headers))
        elif prefix[len("demo-") :] in key:
            seen.stray += 1  # one of our valid events was dead-lettered


# --- the summary ---------------------------------------------------------------------------


def channel_stats(results: Sequence[NotificationResult]) -> dict[str, Counter[str]]:
    """Per channel: attempted, delivered, fell back (not delivered and followed by another
    attempt), suppressed (not attempted)."""
    stats: dict[str, Counter[str]] = {c: Counter() for c in ("voice", "sms", "email", "push")}
    for n in results:
        path = n.path
        for i, (channel, outcome) in enumerate(path):
            c = stats.setdefault(channel, Counter())
            if outcome in ("suppressed", "deferred"):
                c[outcome] += 1
                continue
            c["attempted"] += 1
            if outcome == "delivered":
                c["delivered"] += 1
            elif i + 1 < len(path):
                c["fell back"] += 1
    return stats


def provider_stats(results: Sequence[NotificationResult]) -> dict[str, dict[str, list[str]]]:
    """Per channel and provider, the scenarios whose attempts it sent (one entry per attempt;
    attempts not sent, suppressed or deferred, are left out)."""
    stats: dict[str, dict[str, list[str]]] = {}
    for n in results:
        for a in n.attempts:
            if a.get("outcome") in ("suppressed", "deferred") or not a.get("provider"):
                continue
            by = stats.setdefault(str(a.get("channel")), {})
            by.setdefault(str(a["provider"]), []).append(n.scenario.name)
    return stats


def demo_stack_options(
    time_scale: float = DEFAULT_TIME_SCALE, providers: str = "sandbox"
) -> dict[str, Any]:
    """How the demo's stack runs: the cn contact rules on a simulated clock that starts at
    22:30 in Shanghai (tools.scenarios.DEMO_START) when the stack is ready; the sandbox
    providers, or the real ones against local peers (`providers="local"`)."""
    return {
        "time_scale": time_scale,
        "clock_start": DEMO_START,
        "policy_preset": "cn",
        "sandbox_time_scale": None,  # the sandbox follows the clock
        "providers": providers,
    }


def _safe(value: object) -> str:
    """Free text from the wire (recipients, details): mask any phone number or email left."""
    return scrub(str(value))


def summary(result: DemoResult, verbose: bool = False) -> str:
    """The readable report: notifications, channels, dead letters, verdict."""
    ids = [n.scenario.notification_id(result.run_id) for n in result.notifications]
    w = max((len(i) for i in ids), default=10)
    lines = [
        "",
        f"Notifications (run {result.run_id}, {result.seconds:.1f} s)",
        f"     {'id':<{w}}  {'type':<21}  {'status':<10}  {'expected':<10}  channel path",
    ]
    for nid, n in zip(ids, result.notifications, strict=True):
        mark = "ok" if n.ok else "XX"
        status = n.status or "(none)"
        if len(n.statuses) > 1:
            status += f" ×{len(n.statuses)}"
        lines.append(
            f"  {mark:<3}{nid:<{w}}  {n.scenario.type:<21}  {status:<10}  "
            f"{n.scenario.expected_status:<10}  {path_text(n.path)}"
        )
        pad = " " * 8
        if n.statuses and not n.path_ok:
            lines.append(f"{pad}path differs from the expected {n.scenario.expected_path_text()}")
        if n.scenario.expected_decisions or verbose:
            for decision in n.decisions:
                lines.append(f"{pad}↳ {_safe(decision)}")
        for want in n.missing_decisions:
            lines.append(f"{pad}expected a decision {want!r}, not seen")
        if verbose:
            for a in n.attempts:
                detail = f" ({_safe(a['detail'])})" if a.get("detail") else ""
                to = _safe(a["recipient"]) if a.get("recipient") else "(no address)"
                via = f" via {a['provider']}" if a.get("provider") else ""
                lines.append(f"{pad}· {a.get('channel')} to {to}{via}: {a.get('outcome')}{detail}")
    lines += [
        "",
        "Channels",
        f"     {'channel':<8} {'attempted':>9} {'delivered':>9} {'fell back':>9} "
        f"{'suppressed':>10}",
    ]
    for channel, c in channel_stats(result.notifications).items():
        lines.append(
            f"     {channel:<8} {c['attempted']:>9} {c['delivered']:>9} {c['fell back']:>9} "
            f"{c['suppressed']:>10}"
        )
    lines += ["", "Providers (attempts sent, by the provider that took them)"]
    for channel, by in sorted(provider_stats(result.notifications).items()):
        counts = []  # the channel's main provider first; the others with their scenarios
        for i, (provider, names) in enumerate(sorted(by.items(), key=lambda kv: -len(kv[1]))):
            which = f" ({', '.join(sorted(set(names)))})" if i else ""
            counts.append(f"{provider} {len(names)}{which}")
        lines.append(f"     {channel:<8} {', '.join(counts)}")
    lines += ["", "Dead letters (notifications.deadletter)"]
    tw = max((len(d.scenario.title) for d in result.deadletters), default=10)
    for d in result.deadletters:
        mark = "ok" if d.ok else "XX"
        want = d.scenario.expected_error or "any error"
        if not d.records:
            lines.append(f"  {mark:<3}{d.scenario.title:<{tw}}  not seen (expected error={want})")
            continue
        h = d.records[0]
        extra = f" ×{len(d.records)}" if len(d.records) > 1 else ""
        lines.append(
            f"  {mark:<3}{d.scenario.title:<{tw}}  error={h.get('error')}{extra} "
            f"(expected {want}): {_safe(h.get('error-detail', ''))[:80]}"
        )
    if result.seen.stray:
        lines.append(
            f"  XX {result.seen.stray} other record(s) of this run: a status for an invalid "
            "event, or a valid event dead-lettered"
        )
    if result.conversations:
        lines += conversations_summary(result.conversations)
    checks: list[Any] = [*result.notifications, *result.deadletters, *result.conversations]
    passed, total = sum(c.ok for c in checks), len(checks)
    lines += ["", f"{'PASS' if result.ok else 'FAIL'}: {passed}/{total} as expected"]
    return "\n".join(lines)


async def with_conversations(
    result: DemoResult,
    bootstrap: str,
    endpoints: Endpoints,
    clock: Clock,
    scenarios: Sequence[Scenario],
    say: Print | None = _say,
) -> DemoResult:
    """After the notifications: play the conversations of borrowers whose profiles this run
    published (tools/conversations.py) and add them to the result."""
    names = {s.name for s in scenarios}
    talks = [c for c in CONVERSATIONS if c.sender is None or c.sender in names]
    played = await run_conversations(
        bootstrap, endpoints, result.run_id, clock=clock, conversations=talks, say=say
    )
    return dataclasses.replace(result, conversations=played)


def stack_endpoints(stack: Stack) -> Endpoints:
    """The demo stack's sms and voice services (their /sandbox/inbound) and router API."""
    urls = {name: stack.service(name).url for name in ("sms", "voice")}
    return Endpoints(urls, stack.router_url, stack.api_token)


def env_endpoints() -> Endpoints | None:
    """The same from `make up`'s environment (.run/env); None when it does not say."""
    env = os.environ
    names = ("TONGDA_SMS_URL", "TONGDA_VOICE_URL", "TONGDA_ROUTER_URL", "TONGDA_API_TOKEN")
    if not all(env.get(n) for n in names):
        return None
    urls = {"sms": env["TONGDA_SMS_URL"], "voice": env["TONGDA_VOICE_URL"]}
    return Endpoints(urls, env["TONGDA_ROUTER_URL"], env["TONGDA_API_TOKEN"])


# --- CLI -------------------------------------------------------------------------------------


async def _main(args: argparse.Namespace) -> int:
    if args.bootstrap:
        args.deadline = args.deadline or DEFAULT_DEADLINE_S
        clock = CommonSettings().clock()  # TONGDA_TIME_SCALE / _CLOCK_* from `make up`'s env
        rules = clock.start == DEMO_START
        if not rules:
            _say("the stack's clock does not start at the demo's 22:30: rule scenarios skipped")
        scenarios = SCENARIOS + RULES if rules else SCENARIOS
        result = await run_demo(
            args.bootstrap,
            deadline_s=args.deadline,
            settle_s=args.settle,
            linger_s=args.linger,
            scenarios=scenarios,
            clock=clock,
        )
        endpoints = env_endpoints()
        if endpoints is None:
            _say("no TONGDA_{SMS,VOICE,ROUTER}_URL / TONGDA_API_TOKEN: conversations skipped")
        else:  # the stack must run the sandbox providers (their /sandbox/inbound)
            result = await with_conversations(result, args.bootstrap, endpoints, clock, scenarios)
        print(summary(result, args.verbose))
        return 0 if result.ok else 1
    t0 = time.monotonic()
    stack = Stack(
        run_dir=args.run_dir,
        log_dir=args.run_dir / "demo-logs",
        data_dir=args.run_dir / "demo-data",
        ready_timeout_s=args.ready_timeout,
        **demo_stack_options(args.time_scale, args.providers),
    )
    deadline = args.deadline or (LOCAL_DEADLINE_S if args.providers == "local" else None)
    args.deadline = deadline or DEFAULT_DEADLINE_S
    where = "the sandbox" if args.providers == "sandbox" else "real providers and local peers"
    _say(f"starting the stack with {where} (logs in {stack.log_dir}/) …")
    async with stack:
        _say(
            f"stack ready in {time.monotonic() - t0:.1f} s; router at {stack.router_url}; "
            f"simulated clock at {DEMO_START.isoformat()} (Shanghai), "
            f"x{1 / args.time_scale:g}"
        )
        result = await run_demo(
            stack.bootstrap,
            deadline_s=args.deadline,
            settle_s=args.settle,
            linger_s=args.linger,
            scenarios=SCENARIOS + RULES,
            clock=stack.clock(),
        )
        if args.providers == "sandbox":  # real providers have no /sandbox/inbound
            result = await with_conversations(
                result, stack.bootstrap, stack_endpoints(stack), stack.clock(), SCENARIOS + RULES
            )
        else:
            _say("real providers have no /sandbox/inbound: conversations not played")
        print(summary(result, args.verbose))
        _say("stopping the stack …")
    _say(f"done in {time.monotonic() - t0:.1f} s")
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", help="use the stack at this broker instead of our own")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help=f"seconds to wait for every final status (default {DEFAULT_DEADLINE_S:g}, "
        f"{LOCAL_DEADLINE_S:g} with --providers local)",
    )
    parser.add_argument(
        "--providers",
        choices=("sandbox", "local"),
        default="sandbox",
        help="the channels' sandbox providers (default), or their real providers against "
        "local peers: SMPP test SMSC, SMTP relay, FCM server, SIPp",
    )
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_TIME_SCALE,
        help="real seconds per simulated second of the stack's clock (default %(default)s)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=DEFAULT_SETTLE_S,
        help="longest wait for the router to take in the profiles (default %(default)s s)",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=DEFAULT_LINGER_S,
        help="keep reading after the last final status, to catch duplicates",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print every attempt")
    args = parser.parse_args(argv)

    return run_guarded("demo", lambda: _main(args))


if __name__ == "__main__":
    sys.exit(main())
