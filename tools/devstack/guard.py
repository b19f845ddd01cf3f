"""Running a stack-owning tool (the demo, the fault campaign) from the command line."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from tools.devstack.base import DevstackError


def run_guarded(name: str, main: Callable[[], Awaitable[int]]) -> int:
    """Run `main()` until it returns its exit status. SIGTERM ends it like Ctrl-C does
    (cancelled, so the stack it started is stopped by its own clean-up); a DevstackError
    exits 1 with its message, an interruption 130."""

    async def guarded() -> int:
        task = asyncio.current_task()
        if task is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await main()

    try:
        return asyncio.run(guarded())
    except DevstackError as exc:
        print(f"{name} failed: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"{name} interrupted; the stack was stopped", file=sys.stderr)
        return 130
