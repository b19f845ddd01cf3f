"""The local email peer: an SMTP relay (aiosmtpd) steered like the email sandbox.

It accepts every message (250) and, for a recipient whose local part is `bounce`
(docs/CONTRACT.md), sends a delivery status notification (RFC 3464, as Postfix writes one)
to the message's envelope sender, the VERP bounce address, at the SMTP listener tongda's
email service runs (`TONGDA_SMTP_INBOUND_PORT`): the bounce comes back the way a real
relay's would. `dsn()` builds that report; the email tests use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger(__name__)


def dsn(
    to: str,
    *,
    action: str = "failed",
    status: str = "5.1.1",
    returned_id: str | None = None,
    envid: str | None = None,
    recipient: str = "nobody@example.com",
) -> bytes:
    """A delivery status notification as Postfix writes one (RFC 3464)."""
    envelope_id = f"Original-Envelope-Id: {envid}\n" if envid else ""
    returned = f"Message-ID: {returned_id}\n" if returned_id else ""
    text = f"""From: MAILER-DAEMON@relay.example
To: {to}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B0UND"

--B0UND
Content-Type: text/plain

This is the mail system at host relay.example. I'm sorry to have to inform you
that your message could not be delivered to one or more recipients.

--B0UND
Content-Type: message/delivery-status

Reporting-MTA: dns; relay.example
{envelope_id}Arrival-Date: Mon, 23 Nov 2026 19:00:00 +0000

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Remote-MTA: dns; mx.example.com
Diagnostic-Code: smtp; 550 {status} <{recipient}>: Recipient address
    rejected: User unknown in virtual mailbox table

--B0UND
Content-Type: text/rfc822-headers

From: Tongda Bank <noreply@bank.example>
To: {recipient}
Subject: Repayment due
{returned}
--B0UND--
"""
    return text.replace("\n", "\r\n").encode()


@dataclass
class BouncingRelay:
    """aiosmtpd handler: accept everything; bounce `bounce@…` to the listener at `dsn_to`."""

    dsn_to: tuple[str, int]  # tongda's SMTP listener (host, port)
    bounce_delay_s: float = 0.3
    accepted: int = 0
    bounced: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.accepted += 1
        bouncing = [r for r in envelope.rcpt_tos if r.partition("@")[0].lower() == "bounce"]
        if bouncing and envelope.mail_from:
            headers = BytesHeaderParser().parsebytes(envelope.original_content or b"")
            report = dsn(
                envelope.mail_from, returned_id=headers.get("Message-ID"), recipient=bouncing[0]
            )
            task = asyncio.create_task(self._bounce(envelope.mail_from, report))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return "250 2.0.0 queued"

    async def _bounce(self, to: str, report: bytes) -> None:
        await asyncio.sleep(self.bounce_delay_s)
        host, port = self.dsn_to
        try:
            client = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
            async with client:
                await client.sendmail("", [to], report)
            self.bounced += 1
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("the DSN could not be delivered to %s:%d: %s", host, port, exc)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def serve_relay(
    relay: BouncingRelay, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.Server, int]:
    """Serve `relay` over SMTP on host:port; returns the server and its port."""
    loop = asyncio.get_running_loop()

    def protocol() -> Any:
        return SMTP(relay, hostname="relay.local", loop=loop)

    server = await loop.create_server(protocol, host, port)
    return server, int(server.sockets[0].getsockname()[1])


async def close_relay(server: asyncio.Server, relay: BouncingRelay) -> None:
    server.close()
    await relay.close()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(server.wait_closed(), 2.0)
