"""Where bounces and replies come in: an SMTP listener (aiosmtpd, in the service's event
loop) and an HTTP webhook taking a raw message, both handing it to the provider's `receive`.

The webhook, `POST /webhooks/email/inbound`, takes the raw RFC 5322 message as its body and
an `X-Tongda-Signature: sha256=<hex HMAC-SHA256 of the body with the webhook secret>` header
(403 when it is missing or wrong). It answers 202 with what became of the message, 400 for
an empty body, 413 over `inbound_max_bytes`, 503 when the outcome could not be published
(send it again).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import SecretStr

from services.email.settings import SmtpSettings
from shared.http import json_error

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/email/inbound"
SIGNATURE_HEADER = "X-Tongda-Signature"


@dataclass(frozen=True)
class Received:
    """What became of one received message."""

    result: str  # bounced, late_bounce, inquiry, ignored
    reason: str | None = None
    inquiry_id: str | None = None


Receive = Callable[[bytes, Sequence[str], str | None], Awaitable[Received]]
Accepts = Callable[[str], bool]


def signature(secret: str, body: bytes) -> str:
    """The `X-Tongda-Signature` value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _Handler:
    """aiosmtpd hooks: take RCPT TO for our addresses only, hand DATA to `receive`."""

    def __init__(self, receive: Receive, accepts: Accepts) -> None:
        self.receive = receive
        self.accepts = accepts

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if not self.accepts(address):
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        try:
            received = await self.receive(raw, list(envelope.rcpt_tos), envelope.mail_from)
        except Exception:
            log.warning("inbound email not handled; asking the sender to retry", exc_info=True)
            return "451 4.3.0 temporary failure, try again later"
        log.info("inbound email: %s", received.result)
        return "250 2.0.0 OK"


class InboundListener:
    """An SMTP server on `inbound_host:inbound_port` for mail to the bounce and reply
    addresses (point the domain's MX, or the relay's bounce routing, at it)."""

    def __init__(self, settings: SmtpSettings, receive: Receive, accepts: Accepts) -> None:
        self.settings = settings
        self.handler = _Handler(receive, accepts)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port listened on (useful when `inbound_port` is 0: any free port)."""
        if self._server is None:
            raise RuntimeError("listener not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(
                self.handler,
                data_size_limit=s.inbound_max_bytes,
                enable_SMTPUTF8=True,
                hostname=s.id_domain,
                ident="tongda",
                loop=loop,
            ),
            host=s.inbound_host,
            port=s.inbound_port or 0,
        )
        log.info("inbound SMTP listener on %s:%d", s.inbound_host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def webhook_route(secret: SecretStr, receive: Receive, settings: SmtpSettings) -> web.RouteDef:
    """`POST /webhooks/email/inbound` (see the module's docstring)."""
    key = secret.get_secret_value()

    async def inbound(request: web.Request) -> web.Response:
        given = request.headers.get(SIGNATURE_HEADER, "")
        if request.content_length and request.content_length > settings.inbound_max_bytes:
            return json_error(413, "too_large", f"at most {settings.inbound_max_bytes} bytes")
        body = bytearray()
        async for chunk in request.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > settings.inbound_max_bytes:
                return json_error(413, "too_large", f"at most {settings.inbound_max_bytes} bytes")
        if not given or not hmac.compare_digest(given, signature(key, bytes(body))):
            return json_error(403, "bad_signature", f"{SIGNATURE_HEADER} missing or wrong")
        if not body.strip():
            return json_error(400, "empty", "the body must be a raw RFC 5322 message")
        try:
            received = await receive(bytes(body), (), None)
        except Exception:
            log.warning("inbound email not handled", exc_info=True)
            return json_error(503, "unavailable", "could not be recorded; send it again")
        return web.json_response(asdict(received), status=202)

    return web.post(WEBHOOK_PATH, inbound)
