"""Provider failover: the circuit breaker's states, FailoverProvider moving from a failing
provider to the next and back after the cool-down, ids and receipts prefixed with the
provider that took the send, metrics; SMPP (test SMSC) failing over to the SMS sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from channel_support import collect, create_topics, dispatch, produce, serving
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from services.sms.providers import SmsSandbox, build_provider
from services.sms.smpp.provider import SmppProvider
from services.sms.smpp.settings import SmppSettings
from services.sms.smpp.testsmsc import TestSmsc
from shared.channel.app import create_app
from shared.channel.failover import (
    BreakerState,
    CircuitBreaker,
    FailoverProvider,
    FailoverSettings,
)
from shared.channel.provider import (
    Accepted,
    Completed,
    Inbound,
    Message,
    Provider,
    ProviderContext,
    Receipt,
    SendResult,
)
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome, Dispatch
from shared.errors import ConfigError

pytest_plugins = ["channel_support"]

SETTINGS = FailoverSettings(
    failures=3, window=10, ratio=0.5, min_calls=6, cooldown_s=30.0, attempt_timeout_s=0.3
)
MESSAGE = Message(subject="", body="您的还款日是11月25日")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Scripted(Provider):
    """A provider answering from a script: an exception class, "hang", or a SendResult."""

    def __init__(self, name: str, answer: Any) -> None:
        self.name = name
        self.answer = answer
        self.calls = 0
        self.ctx: ProviderContext | None = None

    async def start(self, ctx: ProviderContext) -> None:
        self.ctx = ctx

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        self.calls += 1
        if self.answer == "hang":
            await asyncio.Event().wait()
        if isinstance(self.answer, type) and issubclass(self.answer, Exception):
            raise self.answer("provider down")
        assert isinstance(self.answer, Accepted | Completed)
        return self.answer


def circuit_state(provider: str) -> float | None:
    return REGISTRY.get_sample_value(
        "tongda_provider_circuit_state", {"channel": "sms", "provider": provider}
    )


def failovers(src: str, dst: str) -> float:
    labels = {"channel": "sms", "from_provider": src, "to_provider": dst}
    return REGISTRY.get_sample_value("tongda_provider_failovers_total", labels) or 0.0


class Sink:
    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self.inbound: list[Inbound] = []
        self.got = asyncio.Event()

    async def on_receipt(self, receipt: Receipt) -> bool:
        self.receipts.append(receipt)
        self.got.set()
        return True

    async def on_inbound(self, inbound: Inbound) -> str:
        self.inbound.append(inbound)
        return "i-1"


def context(redis: Redis, sink: Sink, **overrides: Any) -> ProviderContext:
    settings = ChannelSettings(channel="sms", key_prefix="t:", sandbox_time_scale=0.01, **overrides)
    return ProviderContext(settings, redis, sink.on_receipt, sink.on_inbound)


# --- the breaker ---


def test_breaker_opens_after_consecutive_failures_and_probes_after_the_cool_down() -> None:
    clock = Clock()
    seen: list[BreakerState] = []
    breaker = CircuitBreaker(SETTINGS, clock, seen.append)
    for _ in range(2):
        assert breaker.admit()
        breaker.record(False)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN and not breaker.admit()
    clock.now += 29.9
    assert not breaker.admit()
    clock.now += 0.2
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit()
    assert not breaker.admit()  # one probe at a time
    breaker.record(False)  # the probe failed: open again, for a new cool-down
    assert breaker.state is BreakerState.OPEN
    clock.now += 30
    assert breaker.admit()
    breaker.record(True)
    assert breaker.state is BreakerState.CLOSED and breaker.admit()
    assert seen == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_breaker_opens_on_the_failure_ratio() -> None:
    breaker = CircuitBreaker(SETTINGS, Clock())
    for ok in [True, False, True, False, True]:  # never 3 in a row; 2/5, below min_calls
        breaker.record(ok)
    assert breaker.state is BreakerState.CLOSED
    breaker.record(False)  # 3 of 6 failed: ratio 0.5
    assert breaker.state is BreakerState.OPEN


def test_a_cancelled_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(SETTINGS, clock)
    for _ in range(3):
        breaker.record(False)
    clock.now += 31
    assert breaker.admit()
    breaker.release()
    assert breaker.state is BreakerState.HALF_OPEN and breaker.admit()


# --- the wrapper ---


async def test_errors_fail_over_and_open_the_circuit_then_it_closes(redis: Redis) -> None:
    clock = Clock()
    primary = Scripted("alpha", ConnectionError)
    secondary = Scripted("beta", Accepted("B-1"))
    failover = FailoverProvider([primary, secondary], SETTINGS, clock)
    assert failover.name == "alpha+beta"
    await failover.start(context(redis, Sink()))
    before = failovers("alpha", "beta")
    for _ in range(5):
        result = await failover.send(dispatch("sms", "+8613800138001"), MESSAGE)
        assert result == Accepted("beta:B-1")
    assert primary.calls == 3  # open after three failures: not asked again
    assert failovers("alpha", "beta") - before == 5
    assert circuit_state("alpha") == BreakerState.OPEN
    assert circuit_state("beta") == BreakerState.CLOSED
    primary.answer = Accepted("A-1")
    clock.now += SETTINGS.cooldown_s
    assert await failover.send(dispatch("sms", "+8613800138001"), MESSAGE) == Accepted("alpha:A-1")
    assert circuit_state("alpha") == BreakerState.CLOSED


async def test_failed_fails_over_but_rejected_does_not(redis: Redis) -> None:
    primary = Scripted("alpha", Completed("failed", None, "carrier error"))
    secondary = Scripted("beta", Completed("rejected", "B-2", "invalid number"))
    failover = FailoverProvider([primary, secondary], SETTINGS, Clock())
    await failover.start(context(redis, Sink()))
    result = await failover.send(dispatch("sms", "+8613800130003"), MESSAGE)
    assert result == Completed("rejected", "beta:B-2", "beta: invalid number", provider="beta")
    primary.answer = Completed("rejected", None, "invalid number")
    result = await failover.send(dispatch("sms", "+8613800130003"), MESSAGE)
    assert result == Completed("rejected", None, "alpha: invalid number", provider="alpha")
    assert secondary.calls == 1


async def test_a_hanging_provider_times_out_to_the_next(redis: Redis) -> None:
    failover = FailoverProvider(
        [Scripted("alpha", "hang"), Scripted("beta", Accepted("B-3"))], SETTINGS, Clock()
    )
    await failover.start(context(redis, Sink()))
    assert await failover.send(dispatch("sms", "+8613800138001"), MESSAGE) == Accepted("beta:B-3")


async def test_all_failing_is_failed_with_every_reason(redis: Redis) -> None:
    clock = Clock()
    failover = FailoverProvider(
        [Scripted("alpha", TimeoutError), Scripted("beta", Completed("failed", None, "5xx"))],
        SETTINGS,
        clock,
    )
    await failover.start(context(redis, Sink()))
    result = await failover.send(dispatch("sms", "+8613800138001"), MESSAGE)
    assert isinstance(result, Completed) and result.outcome == "failed"
    assert result.provider is None  # no provider took it: reported under the chain's name
    assert "alpha: TimeoutError" in (result.detail or "") and "beta: 5xx" in (result.detail or "")
    for _ in range(2):
        await failover.send(dispatch("sms", "+8613800138001"), MESSAGE)
    result = await failover.send(dispatch("sms", "+8613800138001"), MESSAGE)
    assert result == Completed("failed", None, "alpha: circuit open; beta: circuit open")


async def test_receipts_and_inbound_of_each_provider_are_prefixed(redis: Redis) -> None:
    sink = Sink()
    primary, secondary = Scripted("alpha", Accepted("A")), Scripted("beta", Accepted("B"))
    failover = FailoverProvider([primary, secondary], SETTINGS, Clock())
    await failover.start(context(redis, sink))
    assert primary.ctx is not None and secondary.ctx is not None
    assert await secondary.ctx.on_receipt(Receipt("B", "delivered"))
    await secondary.ctx.on_inbound(
        Inbound(from_="+8613800138000", text="hi", provider_message_id="SM9")
    )
    await primary.ctx.on_inbound(Inbound(from_="+8613800138000", text="hi"))
    assert [(r.provider_message_id, r.outcome, r.provider) for r in sink.receipts] == [
        ("beta:B", "delivered", "beta")
    ]
    assert [i.provider_message_id for i in sink.inbound] == ["beta:SM9", None]


def test_build_provider_reads_a_failover_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGDA_SMPP_SYSTEM_ID", "tongda")
    chain = build_provider(ChannelSettings(channel="sms", provider="smpp, sandbox"))
    assert isinstance(chain, FailoverProvider)
    assert chain.name == "smpp+sandbox-sms"
    assert [type(p) for p in chain.providers] == [SmppProvider, SmsSandbox]
    assert [str(r.path) for r in chain.webhook_routes()] == ["/sandbox/inbound"]
    assert isinstance(build_provider(ChannelSettings(provider="smpp")), SmppProvider)
    assert isinstance(build_provider(ChannelSettings(provider=" smpp,")), SmppProvider)
    with pytest.raises(ConfigError, match="twice"):
        build_provider(ChannelSettings(provider="sandbox,sandbox"))
    with pytest.raises(ConfigError, match="unknown sms provider 'carrier-pigeon'"):
        build_provider(ChannelSettings(provider="smpp,carrier-pigeon"))


# --- SMPP to the SMS sandbox, for real ---


async def test_smpp_down_fails_over_to_the_sandbox_and_comes_back(redis: Redis) -> None:
    clock = Clock()
    sink = Sink()
    smsc = TestSmsc(password="pw")
    await smsc.start()
    port = smsc.port
    smpp = SmppProvider(
        SmppSettings(
            port=port,
            system_id="tongda",
            password="pw",
            bind_wait_s=0.1,
            rebind_min_s=0.05,
            rebind_max_s=0.1,
        )
    )
    failover = FailoverProvider([smpp, SmsSandbox()], SETTINGS, clock)
    await failover.start(context(redis, sink))
    try:
        await smpp.wait_bound(5.0)
        first = await failover.send(dispatch("sms", "+8613800138001"), MESSAGE)
        assert isinstance(first, Accepted) and first.provider_message_id.startswith("smpp:")
        await asyncio.wait_for(sink.got.wait(), 5)
        assert sink.receipts[0].provider_message_id == first.provider_message_id

        await smsc.stop()  # the SMSC goes away
        results = [
            await failover.send(dispatch("sms", "+8613800138001"), MESSAGE) for _ in range(4)
        ]
        assert all(
            isinstance(r, Accepted) and r.provider_message_id.startswith("sandbox-sms:")
            for r in results
        )
        assert circuit_state("smpp") == BreakerState.OPEN

        smsc = TestSmsc(password="pw", port=port)  # back, same address
        await smsc.start()
        await smpp.wait_bound(5.0)
        clock.now += SETTINGS.cooldown_s
        back = await failover.send(dispatch("sms", "+8613800138001"), MESSAGE)
        assert isinstance(back, Accepted) and back.provider_message_id.startswith("smpp:")
        assert circuit_state("smpp") == BreakerState.CLOSED
        # every receipt comes: the sandbox's for the sends it took while the SMSC was away
        # (their delays are random: they may come after the SMSC's for `back`), and back's
        wanted = {back.provider_message_id} | {
            r.provider_message_id for r in results if isinstance(r, Accepted)
        }
        await _until(lambda: wanted <= {r.provider_message_id for r in sink.receipts}, sink)
    finally:
        await failover.close()
        await smsc.stop()


async def _until(predicate: Callable[[], bool], sink: Sink) -> None:
    async def wait() -> None:
        while not predicate():
            sink.got.clear()
            await sink.got.wait()

    await asyncio.wait_for(wait(), 5)


def test_bad_breaker_settings_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TONGDA_FAILOVER_RATIO", "2")
    with pytest.raises(ConfigError, match="TONGDA_FAILOVER_RATIO"):
        build_provider(ChannelSettings(provider="smpp,sandbox"))


class StartFails(Scripted):
    async def start(self, ctx: ProviderContext) -> None:
        raise ConnectionError("cannot reach the API")


class Closes(Scripted):
    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_a_failed_start_closes_the_providers_already_started(redis: Redis) -> None:
    first = Closes("alpha", Accepted("A"))
    failover = FailoverProvider([first, StartFails("beta", Accepted("B"))], SETTINGS, Clock())
    with pytest.raises(ConnectionError):
        await failover.start(context(redis, Sink()))
    assert first.closed


async def test_in_the_sms_service_outcomes_name_the_provider_that_took_the_send(
    make_settings: Callable[..., ChannelSettings],
) -> None:
    """Receipts (SMPP's DLR, the sandbox's) and synchronous answers (the sandbox refusing an
    invalid number) name the provider of the chain that took the send; a send that every
    provider failed is reported under the chain's name."""
    s = make_settings("sms", provider="smpp,sandbox")
    await create_topics(s)
    smsc = TestSmsc(password="pw")
    await smsc.start()
    smpp = SmppProvider(
        SmppSettings(port=smsc.port, system_id="tongda", password="pw", bind_wait_s=0.1)
    )
    chain = FailoverProvider([smpp, SmsSandbox()], SETTINGS, Clock())
    data = {"loan_id": "L-1", "amount_due": "1200.00", "currency": "CNY", "due_date": "2026-11-25"}
    first = dispatch("sms", "+8613800130001", data=data)
    second = dispatch("sms", "+8613800130001", data=data, customer_id=first.customer_id)
    third = dispatch("sms", "+8613800130003", data=data, customer_id=first.customer_id)
    try:
        async with serving(create_app(s, chain), s.http_port):
            await smpp.wait_bound(5.0)
            await produce(s, s.topics.dispatch("sms"), [(first.customer_id.encode(), dumps(first))])
            await collect(s, s.topics.router_inbox, 1)
            await smsc.stop()  # the SMSC goes away: the sandbox takes the next sends
            await produce(
                s,
                s.topics.dispatch("sms"),
                [(d.customer_id.encode(), dumps(d)) for d in (second, third)],
            )
            records = await collect(s, s.topics.router_inbox, 3)
    finally:
        await smsc.stop()
    outcomes = {o.notification_id: o for o in (decode(r.value, AttemptOutcome) for r in records)}
    assert outcomes[first.notification_id].outcome == "delivered"
    assert outcomes[first.notification_id].provider == "smpp"
    assert (outcomes[first.notification_id].provider_message_id or "").startswith("smpp:")
    assert outcomes[second.notification_id].outcome == "delivered"
    assert outcomes[second.notification_id].provider == "sandbox-sms"
    assert (outcomes[second.notification_id].provider_message_id or "").startswith("sandbox-sms:")
    assert outcomes[third.notification_id].outcome == "rejected"  # at once, not a receipt
    assert outcomes[third.notification_id].provider == "sandbox-sms"


async def test_in_the_sms_service_a_send_no_provider_took_names_the_chain(
    make_settings: Callable[..., ChannelSettings],
) -> None:
    s = make_settings("sms", provider="broken,down")
    await create_topics(s)
    broken = Scripted("broken", Completed("failed", None, "carrier down"))
    chain = FailoverProvider([broken, Scripted("down", ConnectionError)], SETTINGS, Clock())
    data = {"loan_id": "L-1", "amount_due": "1200.00", "currency": "CNY", "due_date": "2026-11-25"}
    attempt = dispatch("sms", "+8613800130001", data=data)
    async with serving(create_app(s, chain), s.http_port):
        await produce(s, s.topics.dispatch("sms"), [(attempt.customer_id.encode(), dumps(attempt))])
        [record] = await collect(s, s.topics.router_inbox, 1)
    outcome = decode(record.value, AttemptOutcome)
    assert (outcome.outcome, outcome.provider) == ("failed", "broken+down")
    assert "broken: carrier down" in (outcome.detail or "")
