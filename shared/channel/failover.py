"""Provider failover inside a channel: send through the first provider whose circuit breaker
admits the send, moving on to the next when one raises, times out or answers `failed`.

`FailoverProvider` wraps any providers of one channel (e.g. SMPP then a Twilio-style API).
Each has its own `CircuitBreaker`: closed; open after `failures` consecutive failures or a
failure ratio of at least `ratio` over the last `window` sends (once `min_calls` are in);
half-open after `cooldown_s`, when a single probe send decides between closed and open.
`rejected`, `delivered` and every accepted send count as successes: an invalid number says
nothing about the provider's health.

Every wrapped provider is started with the service's context, so its receipts, webhooks and
inbound messages still reach the service. Message ids are prefixed with the provider's name
(`smpp:4f2a…`, `twilio:SM…`), so two providers' ids never collide in the receipt book, and
the answers and receipts of a provider carry its name (`Completed.provider`,
`Receipt.provider`): the outcome the service publishes names the provider that took the
send (`smpp`, `twilio`), not the chain. Only a send no provider took (every one failed or
had its circuit open) is reported under the wrapper's own name, which lists the chain
(`smpp+twilio`); the wrapper's name is also the `provider` label of the service's send
counter.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from enum import IntEnum

from aiohttp import web
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.channel.provider import (
    Accepted,
    Completed,
    Inbound,
    InboundSink,
    Message,
    Provider,
    ProviderContext,
    Receipt,
    ReceiptSink,
    SendResult,
)
from shared.contract.models import Dispatch
from shared.errors import ConfigError
from shared.metrics import PROVIDER_CIRCUIT_STATE, PROVIDER_FAILOVERS

log = logging.getLogger(__name__)


class FailoverSettings(BaseSettings):
    """The breakers' tuning, from `TONGDA_FAILOVER_*` variables."""

    model_config = SettingsConfigDict(env_prefix="TONGDA_FAILOVER_", frozen=True, extra="ignore")

    failures: int = Field(5, ge=1)  # consecutive failures that open a circuit
    window: int = Field(20, ge=1)  # recent sends the failure ratio is measured over
    ratio: float = Field(0.5, gt=0, le=1)  # failure ratio that opens a circuit ...
    min_calls: int = Field(10, ge=1)  # ... once this many sends are in the window
    cooldown_s: float = Field(30.0, ge=0)  # open → half-open after this
    attempt_timeout_s: float = Field(10.0, gt=0)  # per send, for a provider followed by another


def load_failover_settings() -> FailoverSettings:
    """The breakers' settings; a bad value is a ConfigError naming its variable."""
    try:
        return FailoverSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"TONGDA_FAILOVER_{'__'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"invalid failover configuration: {problems}") from None


class BreakerState(IntEnum):
    """The gauge's values."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Closed → open → half-open → closed or open again, as described in the module doc."""

    def __init__(
        self,
        settings: FailoverSettings,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.on_change = on_change
        self._state = BreakerState.CLOSED
        self._recent: deque[bool] = deque(maxlen=settings.window)
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """The state now (open turns half-open once the cool-down has passed)."""
        if (
            self._state is BreakerState.OPEN
            and self.clock() - self._opened_at >= self.settings.cooldown_s
        ):
            self._set(BreakerState.HALF_OPEN)
        return self._state

    def admit(self) -> bool:
        """May a send go through now? In half-open, only one probe at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record(self, ok: bool) -> None:
        """The admitted send's result."""
        if self._state is not BreakerState.CLOSED:
            self._probing = False
            if ok:
                self._recent.clear()
                self._consecutive = 0
                self._set(BreakerState.CLOSED)
            else:
                self._open()
            return
        self._recent.append(ok)
        self._consecutive = 0 if ok else self._consecutive + 1
        failed = self._recent.count(False)
        s = self.settings
        if self._consecutive >= s.failures or (
            len(self._recent) >= s.min_calls and failed / len(self._recent) >= s.ratio
        ):
            self._open()

    def release(self) -> None:
        """An admitted send ended without a result (cancelled): free the probe slot."""
        self._probing = False

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._recent.clear()
        self._consecutive = 0
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_change is not None:
                self.on_change(state)


class FailoverProvider(Provider):
    """Sends through `providers` in order of preference, each behind its circuit breaker."""

    def __init__(
        self,
        providers: Sequence[Provider],
        settings: FailoverSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(providers) < 2:
            raise ValueError("failover needs at least two providers")
        self.providers = list(providers)
        self.settings = settings or FailoverSettings()
        self.name = "+".join(p.name for p in self.providers)
        self.channel = "unknown"
        self.breakers = {
            p.name: CircuitBreaker(self.settings, clock, self._gauge_setter(p.name))
            for p in self.providers
        }

    def _gauge_setter(self, provider: str) -> Callable[[BreakerState], None]:
        def set_state(state: BreakerState) -> None:
            PROVIDER_CIRCUIT_STATE.labels(channel=self.channel, provider=provider).set(state)
            log.warning("circuit of %s is now %s", provider, state.name.lower())

        return set_state

    async def start(self, ctx: ProviderContext) -> None:
        """Start every provider with the service's context, their ids prefixed."""
        self.channel = ctx.settings.channel
        started: list[Provider] = []
        try:
            for p in self.providers:
                PROVIDER_CIRCUIT_STATE.labels(channel=self.channel, provider=p.name).set(
                    self.breakers[p.name].state
                )
                await p.start(
                    dataclasses.replace(
                        ctx,
                        on_receipt=_prefixed_receipts(p.name, ctx),
                        on_inbound=_prefixed_inbound(p.name, ctx),
                    )
                )
                started.append(p)
        except BaseException:
            for p in reversed(started):  # the service closes only a provider that started
                try:
                    await p.close()
                except Exception:
                    log.warning("closing %s failed", p.name, exc_info=True)
            raise

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """The first admitting provider's answer that is not a failure; else `failed`."""
        left: str | None = None
        problems: list[str] = []
        for i, p in enumerate(self.providers):
            breaker = self.breakers[p.name]
            if not breaker.admit():
                problems.append(f"{p.name}: circuit open")
                left = left or p.name
                continue
            if left is not None:
                PROVIDER_FAILOVERS.labels(
                    channel=self.channel, from_provider=left, to_provider=p.name
                ).inc()
            last = i == len(self.providers) - 1
            try:
                if last:
                    result = await p.send(dispatch, message)
                else:
                    result = await asyncio.wait_for(
                        p.send(dispatch, message), self.settings.attempt_timeout_s
                    )
            except Exception as exc:  # a provider error: count it, try the next one
                breaker.record(False)
                problems.append(f"{p.name}: {type(exc).__name__}: {exc}")
                left = p.name
                continue
            except BaseException:
                breaker.release()
                raise
            if isinstance(result, Completed) and result.outcome == "failed":
                breaker.record(False)
                problems.append(f"{p.name}: {result.detail or 'failed'}")
                left = p.name
                continue
            breaker.record(True)
            return _prefixed(p.name, result)
        return Completed("failed", None, "; ".join(problems) or "no provider")

    async def close(self) -> None:
        """Close every provider, each even if another fails to."""
        for p in self.providers:
            try:
                await p.close()
            except Exception:
                log.warning("closing %s failed", p.name, exc_info=True)

    def webhook_routes(self) -> Sequence[web.RouteDef]:
        """Every provider's callbacks."""
        return [route for p in self.providers for route in p.webhook_routes()]


def _prefixed(name: str, result: SendResult) -> SendResult:
    if isinstance(result, Accepted):
        return Accepted(f"{name}:{result.provider_message_id}")
    pmid = f"{name}:{result.provider_message_id}" if result.provider_message_id else None
    return Completed(
        result.outcome, pmid, f"{name}: {result.detail or result.outcome}", provider=name
    )


def _prefixed_receipts(name: str, ctx: ProviderContext) -> ReceiptSink:
    async def on_receipt(receipt: Receipt) -> bool:
        pmid = f"{name}:{receipt.provider_message_id}"
        return await ctx.on_receipt(
            dataclasses.replace(receipt, provider_message_id=pmid, provider=name)
        )

    return on_receipt


def _prefixed_inbound(name: str, ctx: ProviderContext) -> InboundSink:
    async def on_inbound(inbound: Inbound) -> str:
        if inbound.provider_message_id:
            pmid = f"{name}:{inbound.provider_message_id}"
            inbound = dataclasses.replace(inbound, provider_message_id=pmid)
        return await ctx.on_inbound(inbound)

    return on_inbound
