"""Constants, errors and small helpers every part of the dev stack shares."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RUN_DIR = REPO_ROOT / ".run"
CHANNEL_SERVICES: tuple[str, ...] = ("sms", "email", "push", "voice")
SERVICES: tuple[str, ...] = ("router", *CHANNEL_SERVICES)
DEFAULT_READY_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 30.0
INFRA_START_TIMEOUT_S = 15.0
INFRA_STOP_TIMEOUT_S = 10.0
PROGRESS_EVERY_S = 5.0
HOST = "127.0.0.1"

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """The default progress sink: one line on stderr."""
    print(message, file=sys.stderr, flush=True)


class DevstackError(RuntimeError):
    """Something in the local stack could not be started, reached or stopped."""


class ServiceError(DevstackError):
    """A service died or did not become ready in time; the message carries its log tail."""


def masked(text: str) -> str:
    """Mask phone numbers, emails and bearer tokens (dates and times stay readable)."""
    from shared.masking import scrub

    return scrub(text)


def log_tail(path: Path, lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    """The last `lines` lines of a log file (masked), or a note that it is empty/missing."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        return f"(no log file at {path})"
    text = data.decode("utf-8", "replace").rstrip()
    if not text:
        return f"(log {path} is empty)"
    return masked("\n".join(text.splitlines()[-lines:]))


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
