"""One hierarchy for the errors tongda raises on purpose."""

from __future__ import annotations


class TongdaError(Exception):
    """Base class of every error tongda raises on purpose."""


class ConfigError(TongdaError):
    """The configuration is invalid or incomplete."""


class InvalidEvent(TongdaError):
    """An event cannot be accepted; it goes to the dead-letter topic with `code` and `detail`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
