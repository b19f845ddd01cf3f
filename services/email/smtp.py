"""The SMTP email provider: sends through a relay over a pooled connection, reports
`delivered` after a bounce window, `bounced` from DSNs, and turns replies into inquiries.

Outcomes of one attempt (docs/providers-email.md has the table):
- 250 after DATA → Accepted; `delivered` when the bounce window closes without a bounce,
  `bounced` when a failed DSN for it arrives first;
- 5xx to RCPT TO (or an address that cannot be sent to) → `rejected`;
- 4xx anywhere, a 5xx to MAIL FROM or DATA, a refused connection, TLS or AUTH failure, a
  timeout → `failed` (the router retries with backoff, then falls back).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from email.utils import parseaddr

from aiohttp import web
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPNotSupported,
    SMTPRecipientsRefused,
    SMTPResponseException,
)

from services.email.bounces import Bounce, Reply, classify
from services.email.compose import build_message, message_ref, verp_address
from services.email.intake import InboundListener, Received, webhook_route
from services.email.pool import SmtpPool
from services.email.settings import SmtpSettings
from services.email.window import BounceWindow
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
from shared.contract.models import Dispatch
from shared.masking import mask_email

log = logging.getLogger(__name__)

BOUNCE_GRACE_S = 300.0  # a bounce that could not be reported keeps the window open this long


def sendable(address: str) -> bool:
    """A single `local@domain` address, nothing around it."""
    _, addr = parseaddr(address)
    local, at, domain = addr.rpartition("@")
    return (
        addr == address
        and bool(at and local and domain)
        and "." in domain
        and not any(c.isspace() or c in '<>,;"\\' for c in addr)
        and len(addr) <= 254
    )


class SmtpProvider(Provider):
    """Email over SMTP (aiosmtplib), with DSN and reply intake (aiosmtpd, or a webhook)."""

    name = "smtp"

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.pool = SmtpPool(settings)
        self._ctx: ProviderContext | None = None
        self._window: BounceWindow | None = None
        self._listener: InboundListener | None = None
        self._key = b""

    @property
    def ctx(self) -> ProviderContext:
        if self._ctx is None:
            raise RuntimeError("smtp provider used before start()")
        return self._ctx

    @property
    def window(self) -> BounceWindow:
        if self._window is None:
            raise RuntimeError("smtp provider used before start()")
        return self._window

    @property
    def listener(self) -> InboundListener | None:
        """The inbound SMTP listener, when `inbound_port` is set."""
        return self._listener

    def _redis_key(self, *parts: str) -> str:
        return ":".join((f"{self.ctx.settings.key_prefix}email", *parts))

    async def start(self, ctx: ProviderContext) -> None:
        """Start the bounce window loop and, if configured, the inbound listener."""
        self._ctx = ctx
        self._key = ctx.settings.address_hash_key.get_secret_value().encode()
        self._window = BounceWindow(
            ctx.redis, self._redis_key("window"), self.settings.bounce_window_s, self._delivered
        )
        self._window.start()
        if self.settings.inbound_port is not None:
            self._listener = InboundListener(self.settings, self.receive, self.accepts)
            try:
                await self._listener.start()
            except BaseException:  # e.g. the port is taken: the service will not start
                self._listener = None
                await self._window.stop()
                raise
        s = self.settings
        log.info(
            "smtp provider: relay %s:%d (%s, %s), bounce window %g s",
            s.host,
            s.server_port,
            s.security,
            "AUTH" if s.username else "no AUTH",
            s.bounce_window_s,
        )

    async def close(self) -> None:
        """Stop the intake and the window loop; QUIT the pooled connections."""
        if self._listener is not None:
            await self._listener.stop()
        if self._window is not None:
            await self._window.stop()
        await self.pool.close()

    def webhook_routes(self) -> Sequence[web.RouteDef]:
        """`POST /webhooks/email/inbound` when a webhook secret is configured."""
        if self.settings.webhook_secret is None:
            return []
        return [webhook_route(self.settings.webhook_secret, self.receive, self.settings)]

    # --- sending --------------------------------------------------------------------------

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        """Send one attempt; Accepted on 250, Completed on a refusal or an error."""
        ref = message_ref(self._key, dispatch)
        recipient = dispatch.recipient.strip()
        if not sendable(recipient):
            return Completed("rejected", ref, "not a deliverable email address")
        s = self.settings
        mail = build_message(dispatch, message, ref, s)
        try:
            async with self.pool.connection() as smtp, asyncio.timeout(s.timeout_s):
                dsn = smtp.supports_extension("dsn")
                await smtp.send_message(
                    mail,
                    sender=verp_address(ref, s),
                    recipients=[recipient],
                    mail_options=["RET=HDRS", f"ENVID={ref}"] if dsn else None,
                    rcpt_options=["NOTIFY=FAILURE,DELAY"] if dsn else None,
                )
        except SMTPRecipientsRefused as exc:
            refused = exc.recipients[0]
            detail = f"SMTP {refused.code} {refused.message}"
            if 500 <= refused.code < 600:
                return Completed("rejected", ref, detail)
            return Completed("failed", ref, detail)
        except SMTPAuthenticationError as exc:
            log.error("SMTP AUTH refused (%d): check TONGDA_SMTP_USERNAME/PASSWORD", exc.code)
            return Completed("failed", ref, f"SMTP AUTH refused: {exc.code}")
        except SMTPResponseException as exc:
            return Completed("failed", ref, f"SMTP {exc.code} {exc.message}")
        except SMTPNotSupported as exc:  # an internationalised address, no SMTPUTF8
            return Completed("rejected", ref, f"SMTP: {exc}")
        except TimeoutError:
            return Completed("failed", ref, f"SMTP: no answer within {s.timeout_s:g} s")
        except (SMTPException, OSError) as exc:
            return Completed("failed", ref, f"SMTP connection: {type(exc).__name__}: {exc}")
        except ValueError as exc:  # an address aiosmtplib refuses to put on the wire
            return Completed("rejected", ref, f"not a deliverable email address: {exc}")
        return await self._accepted(dispatch, ref)

    async def _accepted(self, dispatch: Dispatch, ref: str) -> SendResult:
        pipe = self.ctx.redis.pipeline(transaction=False)
        self.window.open(pipe, ref)
        digest = ref.split(".", 1)[0]
        pipe.set(
            self._redis_key("ref", digest), dispatch.notification_id, ex=self.settings.reply_ttl_s
        )
        try:
            await pipe.execute()
        except Exception:  # no window: report what we know now rather than nothing
            log.warning("bounce window not recorded; reporting delivered now", exc_info=True)
            return Completed("delivered", ref, "SMTP 250 accepted; bounce window unavailable")
        self.window.opened()
        return Accepted(ref)

    async def _delivered(self, ref: str) -> None:
        detail = f"SMTP 250 accepted; no bounce within {self.settings.bounce_window_s:g} s"
        await self.ctx.on_receipt(Receipt(ref, "delivered", detail))

    # --- receiving ------------------------------------------------------------------------

    def accepts(self, address: str) -> bool:
        """Whether the listener takes mail for `address`: the bounce address, the reply
        address or From (with or without a +tag); anything else is refused (550)."""
        local, _, domain = parseaddr(address)[1].lower().rpartition("@")
        base = local.partition("+")[0]
        ours = [self.settings.envelope_from, self.settings.from_address, self.settings.reply_to]
        for candidate in ours:
            if candidate:
                c_local, _, c_domain = parseaddr(candidate)[1].lower().rpartition("@")
                if base == c_local and domain == c_domain:
                    return True
        return False

    async def receive(
        self, raw: bytes, rcpt_tos: Sequence[str] = (), mail_from: str | None = None
    ) -> Received:
        """Handle one received message: a bounce, a reply, or nothing. Raises when its
        outcome or inquiry could not be published (the sender should try again)."""
        try:
            item = classify(raw, self.settings, rcpt_tos, mail_from)
        except Exception as exc:  # malformed beyond what the email package tolerates
            log.warning("inbound email unreadable: %s", type(exc).__name__)
            return Received("ignored", "unreadable message")
        if isinstance(item, Bounce):
            return await self._bounce(item)
        if isinstance(item, Reply):
            return await self._reply(item)
        log.info("inbound email ignored: %s", item.reason)
        return Received("ignored", item.reason)

    async def _bounce(self, bounce: Bounce) -> Received:
        if bounce.ref is None:
            log.warning("DSN for no attempt of ours (no VERP token or Message-ID)")
            return Received("ignored", "DSN matching no attempt")
        if not bounce.failed:
            log.info("DSN %s for %s: not a failure", bounce.action, bounce.ref)
            return Received("ignored", f"DSN action {bounce.action}")
        closes_at = await self.window.take(bounce.ref)
        if closes_at is None:
            log.warning(
                "bounce after its window closed (already reported delivered) or unknown",
                extra={"provider_message_id": bounce.ref},
            )
            return Received("late_bounce", "the attempt was already reported delivered")
        try:
            await self.ctx.on_receipt(Receipt(bounce.ref, "bounced", bounce.detail))
        except BaseException:
            await self.window.reopen(bounce.ref, max(closes_at, time.time() + BOUNCE_GRACE_S))
            raise
        return Received("bounced")

    async def _reply(self, reply: Reply) -> Received:
        notification_id = None
        if reply.refs:
            digest = reply.refs[0].split(".", 1)[0]
            raw = await self.ctx.redis.get(self._redis_key("ref", digest))
            notification_id = raw.decode() if isinstance(raw, bytes) else raw
        inquiry_id = await self.ctx.on_inbound(
            Inbound(
                from_=reply.sender,
                text=reply.text,
                provider_message_id=reply.message_id,
                in_reply_to=notification_id,
            )
        )
        log.info("reply from %s → inquiry %s", mask_email(reply.sender), inquiry_id)
        return Received("inquiry", inquiry_id=inquiry_id)
