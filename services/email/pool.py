"""A small pool of SMTP connections to the relay, reused across messages.

At most `pool_size` connections are open; a send waits for a free one. A connection goes
back to the pool after a message the server answered (accepted, or refused with a reply
code: aiosmtplib has reset the envelope with RSET), and is closed after anything else (a
dropped connection, a timeout, a 421) or after `max_messages_per_connection` messages. A
connection idle for more than `noop_after_s` is checked with NOOP before reuse and replaced
if the server has dropped it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiosmtplib import (
    SMTP,
    SMTPException,
    SMTPHeloError,
    SMTPRecipientsRefused,
    SMTPResponseException,
)

from services.email.settings import SmtpSettings

log = logging.getLogger(__name__)


@dataclass
class _Connection:
    smtp: SMTP
    sent: int = 0
    idle_since: float = field(default_factory=time.monotonic)


def _reusable(exc: BaseException | None) -> bool:
    """Whether a connection is still good after a send that ended with `exc`."""
    if exc is None or isinstance(exc, SMTPRecipientsRefused):
        return True
    return isinstance(exc, SMTPResponseException) and exc.code != 421


class SmtpPool:
    """Connections to one relay, opened on demand and kept for reuse."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._idle: list[_Connection] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._tls = settings.tls_context()
        self.opened = 0  # connections opened so far (tests, logs)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[SMTP]:
        """A connected, authenticated client for one message; returned to the pool after.
        Waits for a free connection without limit (the worker's send timeout bounds it);
        checking or opening one takes at most `timeout_s`."""
        async with self._slots:
            async with asyncio.timeout(self.settings.timeout_s):
                conn = await self._take()
            try:
                yield conn.smtp
            except BaseException as exc:
                self._give_back(conn, exc)
                raise
            self._give_back(conn, None)

    async def _take(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.smtp.is_connected:
                continue
            if time.monotonic() - conn.idle_since < self.settings.noop_after_s:
                return conn
            try:
                await conn.smtp.noop(timeout=self.settings.timeout_s)
                return conn
            except (SMTPException, OSError):
                log.info("idle SMTP connection dropped by the server; reconnecting")
                conn.smtp.close()
        return await self._open()

    async def _open(self) -> _Connection:
        s = self.settings
        smtp = SMTP(
            hostname=s.host,
            port=s.server_port,
            username=s.username,
            password=s.password.get_secret_value() if s.password is not None else None,
            local_hostname=s.helo_name,
            timeout=s.timeout_s,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            validate_certs=s.tls_verify,
            tls_context=self._tls,
        )
        try:
            await smtp.connect()  # STARTTLS and AUTH as configured
            if smtp.is_ehlo_or_helo_needed:  # its extensions (DSN, SIZE) before the first send
                try:
                    await smtp.ehlo()
                except SMTPHeloError:
                    await smtp.helo()
        except BaseException:
            smtp.close()
            raise
        self.opened += 1
        log.info("SMTP connection %d opened to %s:%d", self.opened, s.host, s.server_port)
        return _Connection(smtp)

    def _give_back(self, conn: _Connection, exc: BaseException | None) -> None:
        conn.sent += 1
        keep = (
            _reusable(exc)
            and conn.smtp.is_connected
            and conn.sent < self.settings.max_messages_per_connection
        )
        if keep:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        elif conn.smtp.is_connected:
            if exc is None or _reusable(exc):  # worn out, not broken: say goodbye
                task = asyncio.create_task(self._quit(conn.smtp))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            else:
                conn.smtp.close()

    async def _quit(self, smtp: SMTP) -> None:
        with contextlib.suppress(SMTPException, OSError, TimeoutError):
            await asyncio.wait_for(smtp.quit(), 2.0)
        smtp.close()

    async def close(self) -> None:
        """QUIT every idle connection (in-flight sends have ended: the service drained)."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(c.smtp) for c in idle if c.smtp.is_connected))
        await asyncio.gather(*self._closing, return_exceptions=True)
