"""Pieces every HTTP provider (Twilio-style SMS and voice, FCM) shares: secrets read from
settings or mounted files, `Retry-After` parsing, and the retry-later failure and gate.

A provider answering 429 or 5xx with `Retry-After` makes `send()` raise `RetryLater`: the
channel worker turns any exception from `send()` into a `failed` outcome whose detail is the
exception's text (`RetryLater: ... retry after 30 s`), and the router retries `failed` with
its own backoff. So that a retry the router makes sooner does not hit the provider again,
the provider keeps a `RetryAfterGate`: until the delay has passed, `send()` raises
`RetryLater` at once without calling the provider.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar

from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from shared.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)

DEFAULT_RETRY_AFTER_S = 5.0  # when a 429 or 5xx names no delay
MAX_RETRY_AFTER_S = 3600.0  # a longer delay is a provider bug; cap it


class RetryLater(Exception):
    """The provider is overloaded or limiting us: retry this attempt after `delay_s`."""

    def __init__(self, reason: str, delay_s: float) -> None:
        super().__init__(f"{reason}; retry after {delay_s:g} s")
        self.reason = reason
        self.delay_s = delay_s


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    delta = when.timestamp() - now
    return min(max(0.0, math.ceil(delta)), MAX_RETRY_AFTER_S)


class RetryAfterGate:
    """Remembers until when a provider asked us not to call it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._until = 0.0

    def hold(self, delay_s: float) -> None:
        """Do not call the provider for `delay_s` seconds (extends, never shortens)."""
        self._until = max(self._until, self.clock() + delay_s)

    def check(self, provider: str) -> None:
        """Raise `RetryLater` with the time left while the provider's delay runs."""
        left = self._until - self.clock()
        if left > 0:
            raise RetryLater(f"{provider} asked to wait (Retry-After)", math.ceil(left * 10) / 10)


def read_secret(value: SecretStr, file: Path | None, what: str) -> SecretStr:
    """A secret from a mounted file (trailing newline stripped) when `file` is set, else
    `value`; raises ConfigError naming the setting (never the secret) when neither is."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"{what}: cannot read the secret file {file}: {reason}") from None
        if not text:
            raise ConfigError(f"{what}: the secret file {file} is empty")
        return SecretStr(text)
    if not value.get_secret_value():
        raise ConfigError(f"{what} is not set")
    return value


def provider_settings(cls: type[S], env_prefix: str) -> S:
    """A provider's settings from the environment; a bad value is a ConfigError naming the
    variable (never its value, which may be a credential)."""
    try:
        return cls()
    except ValidationError as exc:
        names = ", ".join(
            env_prefix + "__".join(str(p) for p in err["loc"]).upper()
            for err in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"invalid provider configuration: {names}") from None
