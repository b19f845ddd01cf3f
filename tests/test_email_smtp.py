"""The SMTP email provider against real SMTP servers (aiosmtpd on 127.0.0.1, started here):
outcomes per server answer, TLS and AUTH, connection reuse, the message as received, the
bounce window, DSNs and replies through the listener and the webhook, configuration."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import orjson
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from channel_support import (
    collect,
    create_topics,
    dispatch,
    produce,
    serving,
    wait_until,
)
from redis.asyncio import Redis

from services.email.bounces import Bounce, Ignored, Reply, classify, strip_quoted
from services.email.compose import message_ref
from services.email.intake import SIGNATURE_HEADER, WEBHOOK_PATH, signature
from services.email.providers import build_provider
from services.email.settings import SmtpSettings, load_smtp_settings
from services.email.smtp import SmtpProvider
from shared.channel.app import create_app
from shared.channel.provider import Accepted, Completed, Inbound, ProviderContext, Receipt
from shared.config import ChannelSettings
from shared.contract.codec import dumps
from shared.errors import ConfigError
from shared.templates import Message
from tests.signing_keys import SIGNING_ENV
from tools.devstack import free_port
from tools.peers.smtp import dsn

pytest_plugins = ["channel_support"]

PASSWORD = "s3cret-Pa55word-XYZ"
WEBHOOK_SECRET = "hook-secret-123456"
MESSAGE = Message(subject="Repayment due on 2026-12-01", body="Your repayment of 1200.00 CNY.")


# --- a real SMTP server -----------------------------------------------------------------


@dataclass
class Relay:
    """An aiosmtpd server: accepts, or answers RCPT with 550 (local part `reject`) or
    451 (`defer`); records every accepted message and the connections made."""

    port: int = 0
    received: list[Envelope] = field(default_factory=list)
    sessions: list[SMTP] = field(default_factory=list)
    logins: list[bytes] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    dsn: bool = False  # offer the DSN extension (RFC 3461)
    rcpt_options: list[list[str]] = field(default_factory=list)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: Any
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]] if self.dsn else list(responses)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        local = address.partition("@")[0]
        if local == "reject":
            return "550 5.1.1 <reject@example.com>: Recipient address rejected: user unknown"
        if local == "defer":
            return "451 4.7.1 greylisted, try again later"
        envelope.rcpt_tos.append(address)
        self.rcpt_options.append(list(options))
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append(envelope)
        self.arrived.set()
        return "250 2.0.0 queued as 4F2A1"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data.password == PASSWORD.encode()
        if ok:
            self.logins.append(data.login)
        return AuthResult(success=ok, handled=False)

    def message(self, i: int = -1) -> EmailMessage:
        raw = self.received[i].original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class DsnSMTP(SMTP):
    """aiosmtpd taking the DSN parameters of MAIL and RCPT (it implements no DSN itself)."""

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        for name in ("RET", "ENVID", "NOTIFY", "ORCPT"):
            if result is not None:
                result.pop(name, None)
        return result


@asynccontextmanager
async def relay(
    *,
    starttls: ssl.SSLContext | None = None,
    implicit_tls: ssl.SSLContext | None = None,
    auth: bool = False,
    dsn: bool = False,
) -> AsyncIterator[Relay]:
    """Serve a `Relay` on a free port of 127.0.0.1 for the block."""
    r = Relay(dsn=dsn)
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        smtp = (DsnSMTP if dsn else SMTP)(
            r,
            hostname="relay.test",
            tls_context=starttls,
            require_starttls=starttls is not None,
            auth_required=auth,
            auth_require_tls=True,
            authenticator=r.authenticate if auth else None,
            loop=loop,
        )
        r.sessions.append(smtp)
        return smtp

    server = await loop.create_server(protocol, "127.0.0.1", 0, ssl=implicit_tls)
    r.port = server.sockets[0].getsockname()[1]
    try:
        yield r
    finally:
        server.close()
        for s in r.sessions:
            if s.transport is not None:
                s.transport.close()
        await server.wait_closed()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


# --- the provider, started with a real Redis and collecting sinks -----------------------


class Sink:
    """The service's receipt and inbound callbacks, recording what they are given."""

    def __init__(self) -> None:
        self.receipts: list[Receipt] = []
        self.inbounds: list[Inbound] = []
        self.changed = asyncio.Condition()
        self.fail = False

    async def receipt(self, receipt: Receipt) -> bool:
        if self.fail:
            raise ConnectionError("broker unavailable")
        async with self.changed:
            self.receipts.append(receipt)
            self.changed.notify_all()
        return True

    async def inbound(self, message: Inbound) -> str:
        async with self.changed:
            self.inbounds.append(message)
            self.changed.notify_all()
        return f"inq-{len(self.inbounds)}"

    async def wait(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), within_s)


def smtp_settings(port: int, **overrides: Any) -> SmtpSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from_address": "Tongda Bank <noreply@bank.example>",
        "reply_to": "reply@bank.example",
        "bounce_window_s": 0.4,
        "timeout_s": 3.0,
        "helo_name": "tongda.test",
    }
    return SmtpSettings(**{**values, **overrides})


Started = Callable[..., Awaitable[tuple[SmtpProvider, Sink]]]


@pytest.fixture
async def started(redis: Redis, redis_server: str) -> AsyncIterator[Started]:
    """Start SmtpProviders on the test's Redis; close them at the end."""
    providers: list[SmtpProvider] = []
    channel = ChannelSettings(
        channel="email", redis_url=redis_server, key_prefix=f"t{uuid.uuid4().hex[:8]}:"
    )

    async def start(settings: SmtpSettings) -> tuple[SmtpProvider, Sink]:
        provider, sink = SmtpProvider(settings), Sink()
        await provider.start(ProviderContext(channel, redis, sink.receipt, sink.inbound))
        providers.append(provider)
        return provider, sink

    yield start
    for p in providers:
        await p.close()


# --- sending ------------------------------------------------------------------------------


async def test_accepted_message_as_received_then_delivered_after_the_window(
    started: Started,
) -> None:
    async with relay() as r:
        provider, sink = await started(smtp_settings(r.port))
        d = dispatch("email", "zhang.wei@example.com")
        began = time.monotonic()
        result = await provider.send(d, MESSAGE)
        assert isinstance(result, Accepted)
        ref = result.provider_message_id

        envelope = r.received[0]
        assert envelope.mail_from == f"bounces+{ref}@bank.example"  # VERP
        assert envelope.rcpt_tos == ["zhang.wei@example.com"]
        mail = r.message()
        assert mail.get_content_type() == "multipart/alternative"
        parts = {p.get_content_type(): p.get_content() for p in mail.iter_parts()}
        assert parts["text/plain"].strip() == MESSAGE.body
        assert "Your repayment of 1200.00 CNY." in parts["text/html"]
        assert mail["Message-ID"] == f"<{ref}@bank.example>"
        assert mail["From"] == "Tongda Bank <noreply@bank.example>"
        assert mail["To"] == "zhang.wei@example.com"
        assert mail["Subject"] == MESSAGE.subject
        assert mail["Reply-To"] == "reply@bank.example"
        assert (
            mail["List-Unsubscribe"] == f"<mailto:reply@bank.example?subject=unsubscribe%20{ref}>"
        )
        assert mail["Auto-Submitted"] == "auto-generated"
        headers = (envelope.original_content or b"").split(b"\r\n\r\n", 1)[0].decode()
        for secret in (d.notification_id, d.customer_id, "L-1"):
            assert secret not in headers  # no ids or data in the headers

        # the same attempt always has the same id; another attempt shares its notification part
        key = b"tongda-dev-address-key"
        assert message_ref(key, d) == ref
        again = message_ref(key, d.model_copy(update={"attempt": 2}))
        assert again != ref and again.split(".")[0] == ref.split(".")[0]

        await sink.wait(lambda: len(sink.receipts) == 1)
        assert sink.receipts[0].provider_message_id == ref
        assert sink.receipts[0].outcome == "delivered"
        assert time.monotonic() - began >= 0.4  # not before the bounce window closed


async def test_html_part_from_the_template_is_sent_as_is(started: Started) -> None:
    html = "<p>Your repayment of <b>1200.00 CNY</b> is due.</p>"
    message = Message(subject="s", body="plain text", html=html)
    async with relay() as r:
        provider, _ = await started(
            smtp_settings(r.port, list_unsubscribe="<https://bank.example/u/{token}>")
        )
        result = await provider.send(dispatch("email", "li.na@example.com"), message)
        assert isinstance(result, Accepted)
        mail = r.message()
        parts = {p.get_content_type(): p.get_content() for p in mail.iter_parts()}
        assert parts["text/html"].strip() == html
        assert mail["List-Unsubscribe"] == f"<https://bank.example/u/{result.provider_message_id}>"
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


async def test_dsn_parameters_when_the_relay_offers_dsn(started: Started) -> None:
    async with relay(dsn=True) as r:
        provider, _ = await started(smtp_settings(r.port))
        result = await provider.send(dispatch("email", "a@example.com"), MESSAGE)
        assert isinstance(result, Accepted)
        options = r.received[0].mail_options
        assert "RET=HDRS" in options
        assert f"ENVID={result.provider_message_id}".upper() in options
        assert r.rcpt_options == [["NOTIFY=FAILURE,DELAY"]]
    async with relay() as r:  # a relay without DSN gets no DSN parameters
        provider, _ = await started(smtp_settings(r.port))
        result = await provider.send(dispatch("email", "a@example.com"), MESSAGE)
        assert isinstance(result, Accepted)
        assert not any(o.startswith("ENVID") for o in r.received[0].mail_options)
        assert r.rcpt_options == [[]]


async def test_550_on_rcpt_is_rejected_451_is_failed_and_the_connection_is_reused(
    started: Started,
) -> None:
    async with relay() as r:
        provider, sink = await started(smtp_settings(r.port, pool_size=1))
        rejected = await provider.send(dispatch("email", "reject@example.com"), MESSAGE)
        assert isinstance(rejected, Completed) and rejected.outcome == "rejected"
        assert rejected.detail is not None and rejected.detail.startswith("SMTP 550 5.1.1")
        deferred = await provider.send(dispatch("email", "defer@example.com"), MESSAGE)
        assert isinstance(deferred, Completed) and deferred.outcome == "failed"
        assert deferred.detail is not None and deferred.detail.startswith("SMTP 451 4.7.1")
        ok = await provider.send(dispatch("email", "ok@example.com"), MESSAGE)
        assert isinstance(ok, Accepted)
        assert len(r.received) == 1 and provider.pool.opened == 1 and len(r.sessions) == 1
        await sink.wait(lambda: len(sink.receipts) == 1)  # only the accepted one gets a window
        assert [x.provider_message_id for x in sink.receipts] == [ok.provider_message_id]


async def test_invalid_address_is_rejected_without_a_connection(started: Started) -> None:
    provider, _ = await started(smtp_settings(free_port()))
    for address in ("not-an-address", "a@b@example.com", "x@example.com\r\nBcc: y@example.com"):
        result = await provider.send(dispatch("email", address), MESSAGE)
        assert isinstance(result, Completed) and result.outcome == "rejected"
    assert provider.pool.opened == 0


async def test_refused_connection_and_a_silent_server_are_failed(started: Started) -> None:
    provider, _ = await started(smtp_settings(free_port()))
    result = await provider.send(dispatch("email", "a@example.com"), MESSAGE)
    assert isinstance(result, Completed) and result.outcome == "failed"
    assert result.detail is not None and result.detail.startswith("SMTP connection")

    handlers: list[asyncio.Task[Any]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await reader.read()  # never greets; ends when the client gives up
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        provider, _ = await started(smtp_settings(port, timeout_s=0.3))
        began = time.monotonic()
        result = await provider.send(dispatch("email", "a@example.com"), MESSAGE)
        assert isinstance(result, Completed) and result.outcome == "failed"
        assert time.monotonic() - began < 2.0
        await asyncio.wait_for(asyncio.gather(*handlers), 5)  # the client hung up
    finally:
        server.close()
        await server.wait_closed()


async def test_starttls_with_auth_and_credentials_never_logged(
    started: Started,
    server_tls: ssl.SSLContext,
    ca_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    password_file = tmp_path / "smtp-password"
    password_file.write_text(PASSWORD + "\n")
    async with relay(starttls=server_tls, auth=True) as r:
        settings = load_smtp_settings(
            **smtp_settings(r.port).model_dump(exclude={"security"}, exclude_none=True),
            security="starttls",
            ca_file=ca_file,
            username="tongda",
            password_file=password_file,
        )
        provider, _ = await started(settings)
        result = await provider.send(dispatch("email", "wang@example.com"), MESSAGE)
        assert isinstance(result, Accepted)
        assert r.logins == [b"tongda"]
        assert r.sessions[0].session is not None and r.sessions[0].session.ssl is not None

        wrong = smtp_settings(
            r.port,
            security="starttls",
            ca_file=ca_file,
            username="tongda",
            password="wrong-" + PASSWORD,
        )
        provider, _ = await started(wrong)
        result = await provider.send(dispatch("email", "wang@example.com"), MESSAGE)
        assert isinstance(result, Completed) and result.outcome == "failed"
        assert result.detail is not None and "AUTH" in result.detail
        assert len(r.received) == 1

    ours = [rec for rec in caplog.records if not rec.name.startswith("mail.log")]
    assert ours, "the provider logs something"
    text = "\n".join(f"{rec.getMessage()} {rec.__dict__}" for rec in ours)
    assert PASSWORD not in text and "wang@example.com" not in text


async def test_untrusted_certificate_is_failed(
    started: Started, server_tls: ssl.SSLContext
) -> None:
    async with relay(starttls=server_tls) as r:
        provider, _ = await started(smtp_settings(r.port, security="starttls"))  # system CAs
        result = await provider.send(dispatch("email", "a@example.com"), MESSAGE)
        assert isinstance(result, Completed) and result.outcome == "failed"
        assert not r.received


async def test_starttls_required_from_a_relay_without_it_is_failed(started: Started) -> None:
    async with relay() as r:  # offers no STARTTLS: no plaintext fallback
        provider, _ = await started(smtp_settings(r.port, security="starttls"))
        result = await provider.send(dispatch("email", "a@example.com"), MESSAGE)
        assert isinstance(result, Completed) and result.outcome == "failed"
        assert result.detail is not None and "STARTTLS" in result.detail
        assert not r.received


async def test_implicit_tls(started: Started, server_tls: ssl.SSLContext, ca_file: Path) -> None:
    async with relay(implicit_tls=server_tls) as r:
        provider, _ = await started(smtp_settings(r.port, security="tls", ca_file=ca_file))
        result = await provider.send(dispatch("email", "a@example.com"), MESSAGE)
        assert isinstance(result, Accepted)
        assert len(r.received) == 1


async def test_connections_are_pooled_and_replaced_when_dropped(started: Started) -> None:
    async with relay() as r:
        provider, _ = await started(smtp_settings(r.port, pool_size=2, noop_after_s=0.0))
        results = await asyncio.gather(
            *(provider.send(dispatch("email", f"u{i}@example.com"), MESSAGE) for i in range(12))
        )
        assert all(isinstance(x, Accepted) for x in results)
        assert len(r.received) == 12
        assert provider.pool.opened == len(r.sessions) <= 2

        for s in r.sessions:  # the server drops its idle connections
            assert s.transport is not None
            s.transport.close()
        result = await provider.send(dispatch("email", "after@example.com"), MESSAGE)
        assert isinstance(result, Accepted) and len(r.received) == 13
        assert provider.pool.opened == len(r.sessions) <= 3


async def test_connection_retired_after_max_messages(started: Started) -> None:
    async with relay() as r:
        provider, _ = await started(
            smtp_settings(r.port, pool_size=1, max_messages_per_connection=2)
        )
        for i in range(5):
            result = await provider.send(dispatch("email", f"u{i}@example.com"), MESSAGE)
            assert isinstance(result, Accepted)
        assert provider.pool.opened == 3


# --- bounces and replies ----------------------------------------------------------------


def reply(in_reply_to: str, body: str, *, sender: str = "zhang.wei@example.com") -> bytes:
    message = EmailMessage()
    message["From"] = f"Zhang Wei <{sender}>"
    message["To"] = "reply@bank.example"
    message["Subject"] = "Re: Repayment due"
    message["Message-ID"] = f"<{uuid.uuid4().hex}@mail.example.com>"
    message["In-Reply-To"] = in_reply_to
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


async def deliver(port: int, raw: bytes, rcpt: str, mail_from: str = "") -> None:
    """Deliver `raw` to the listener over SMTP, as an MTA would."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=5)
    async with client:
        await client.sendmail(mail_from, [rcpt], raw)


async def test_dsn_to_the_listener_bounces_the_right_attempt(started: Started) -> None:
    async with relay() as r:
        provider, sink = await started(smtp_settings(r.port, inbound_port=0, bounce_window_s=3.0))
        assert provider.listener is not None
        first = await provider.send(dispatch("email", "nobody@example.com"), MESSAGE)
        second = await provider.send(dispatch("email", "someone@example.com"), MESSAGE)
        assert isinstance(first, Accepted) and isinstance(second, Accepted)
        bounce_to = r.received[0].mail_from
        assert bounce_to is not None

        await deliver(provider.listener.port, dsn("bounces@bank.example"), bounce_to)
        await sink.wait(lambda: len(sink.receipts) == 1)
        receipt = sink.receipts[0]
        assert receipt.provider_message_id == first.provider_message_id
        assert receipt.outcome == "bounced"
        assert receipt.detail is not None and "5.1.1" in receipt.detail

        # the same DSN again: the attempt is reported once
        await deliver(provider.listener.port, dsn("bounces@bank.example"), bounce_to)
        # a DSN that only carries the returned Message-ID finds the second attempt
        await deliver(
            provider.listener.port,
            dsn("bounces@bank.example", returned_id=f"<{second.provider_message_id}@bank.example>"),
            "bounces@bank.example",
        )
        await sink.wait(lambda: len(sink.receipts) == 2)
        assert sink.receipts[1].provider_message_id == second.provider_message_id
        assert sink.receipts[1].outcome == "bounced"
        assert len(sink.receipts) == 2


def test_dsn_found_by_its_envelope_id_and_replies_classified() -> None:
    settings = smtp_settings(25)
    ref = "0123456789abcdef01234567.1.2"
    found = classify(dsn("postmaster@bank.example", envid=ref), settings)
    assert isinstance(found, Bounce) and found.ref == ref and found.failed
    assert found.status == "5.1.1" and found.diagnostic is not None
    assert isinstance(classify(dsn("x@elsewhere.example"), settings), Bounce)
    assert classify(dsn("x@elsewhere.example"), settings).ref is None  # type: ignore[union-attr]

    unsubscribe = EmailMessage()
    unsubscribe["From"] = "li.na@example.com"
    unsubscribe["Subject"] = f"unsubscribe {ref}"
    parsed = classify(unsubscribe.as_bytes(), settings, ["reply@bank.example"], "li.na@example.com")
    assert isinstance(parsed, Reply) and parsed.text == "unsubscribe" and parsed.refs == [ref]

    odd = dsn("postmaster@bank.example", returned_id=f"<{ref}@bank.example>").replace(
        b"text/rfc822-headers", b"text/rfc822-headers; charset=x-unknown"
    )
    odd_found = classify(odd, settings)
    assert isinstance(odd_found, Bounce) and odd_found.ref == ref
    bogus = b"From: a@example.com\r\nContent-Type: text/plain; charset=x-bogus\r\n\r\nhello"
    bogus_reply = classify(bogus, settings)
    assert isinstance(bogus_reply, Reply) and bogus_reply.text == "hello"

    null_sender = classify(reply("<x@y>", "Delivery failed."), settings, [], "<>")
    assert isinstance(null_sender, Ignored)
    outlook = "Paid.\r\n\r\n-----Original Message-----\r\nFrom: Tongda Bank\r\n> old"
    assert strip_quoted(outlook) == "Paid."


async def test_listener_refuses_other_addresses_and_retries_when_publishing_fails(
    started: Started,
) -> None:
    async with relay() as r:
        provider, sink = await started(smtp_settings(r.port, inbound_port=0, bounce_window_s=3.0))
        assert provider.listener is not None
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
            await deliver(provider.listener.port, dsn("x@bank.example"), "someone@bank.example")

        sent = await provider.send(dispatch("email", "nobody@example.com"), MESSAGE)
        assert isinstance(sent, Accepted)
        verp = r.received[0].mail_from or ""
        sink.fail = True  # the broker is down: the MTA is told to try again later
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await deliver(provider.listener.port, dsn(verp), verp)
        assert refused.value.code == 451
        sink.fail = False
        await deliver(provider.listener.port, dsn(verp), verp)  # the MTA's retry
        await sink.wait(lambda: len(sink.receipts) == 1)
        assert sink.receipts[0].outcome == "bounced"


async def test_delayed_dsn_does_not_bounce_and_late_bounce_changes_nothing(
    started: Started,
) -> None:
    async with relay() as r:
        provider, sink = await started(smtp_settings(r.port, inbound_port=0, bounce_window_s=0.3))
        assert provider.listener is not None
        sent = await provider.send(dispatch("email", "slow@example.com"), MESSAGE)
        assert isinstance(sent, Accepted)
        verp = r.received[0].mail_from or ""
        delayed = await provider.receive(dsn(verp, action="delayed", status="4.4.7"), [verp])
        assert delayed.result == "ignored"
        await sink.wait(lambda: len(sink.receipts) == 1)
        assert sink.receipts[0].outcome == "delivered"
        late = await provider.receive(dsn(verp), [verp])
        assert late.result == "late_bounce"
        assert len(sink.receipts) == 1


async def test_reply_becomes_an_inquiry_without_the_quoted_part(started: Started) -> None:
    async with relay() as r:
        provider, sink = await started(smtp_settings(r.port, inbound_port=0))
        assert provider.listener is not None
        d = dispatch("email", "zhang.wei@example.com")
        sent = await provider.send(d, MESSAGE)
        assert isinstance(sent, Accepted)
        message_id = r.message()["Message-ID"]

        body = (
            "I already paid yesterday, please check.\n\n"
            "On Mon, 23 Nov 2026 at 19:00, Tongda Bank <noreply@bank.example> wrote:\n"
            "> Your repayment of 1200.00 CNY.\n"
        )
        await deliver(
            provider.listener.port,
            reply(message_id, body),
            "reply@bank.example",
            "zhang.wei@example.com",
        )
        chinese = (
            "我昨天已经还款了。\n\n在 2026年11月23日 19:00，通达银行 写道：\n> 您的贷款本期应还\n"
        )
        await deliver(
            provider.listener.port,
            reply("<unknown@elsewhere>", chinese),
            "reply@bank.example",
            "a@b.example",
        )
        await sink.wait(lambda: len(sink.inbounds) == 2)
        first, second = sink.inbounds
        assert first.from_ == "zhang.wei@example.com"
        assert first.text == "I already paid yesterday, please check."
        assert first.in_reply_to == d.notification_id
        assert first.provider_message_id is not None
        assert second.text == "我昨天已经还款了。" and second.in_reply_to is None

        out_of_office = reply(message_id, "I am out of the office.")
        out_of_office = out_of_office.replace(
            b"Subject:", b"Auto-Submitted: auto-replied\r\nSubject:"
        )
        result = await provider.receive(
            out_of_office, ["reply@bank.example"], "zhang.wei@example.com"
        )
        assert result.result == "ignored"
        assert len(sink.inbounds) == 2


async def test_webhook_needs_the_signature(
    started: Started, aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]]
) -> None:
    async with relay() as r:
        provider, sink = await started(
            smtp_settings(r.port, webhook_secret=WEBHOOK_SECRET, bounce_window_s=3.0)
        )
        app = web.Application()
        app.router.add_routes(provider.webhook_routes())
        client = await aiohttp_client(app)
        sent = await provider.send(dispatch("email", "nobody@example.com"), MESSAGE)
        assert isinstance(sent, Accepted)
        body = dsn(f"bounces+{sent.provider_message_id}@bank.example")

        missing = await client.post(WEBHOOK_PATH, data=body)
        assert missing.status == 403
        forged = await client.post(
            WEBHOOK_PATH, data=body, headers={SIGNATURE_HEADER: signature("guess", body)}
        )
        assert forged.status == 403
        assert not sink.receipts

        good = await client.post(
            WEBHOOK_PATH, data=body, headers={SIGNATURE_HEADER: signature(WEBHOOK_SECRET, body)}
        )
        assert good.status == 202
        assert (await good.json())["result"] == "bounced"
        assert sink.receipts[0].provider_message_id == sent.provider_message_id
        assert sink.receipts[0].outcome == "bounced"


async def test_no_webhook_without_a_secret(started: Started) -> None:
    provider, _ = await started(smtp_settings(free_port()))
    assert list(provider.webhook_routes()) == []


# --- configuration ----------------------------------------------------------------------


def test_missing_and_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TONGDA_SMTP_"):
            monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as missing:
        build_provider(ChannelSettings(channel="email", provider="smtp"))
    assert "TONGDA_SMTP_HOST" in str(missing.value)
    assert "TONGDA_SMTP_FROM_ADDRESS" in str(missing.value)

    monkeypatch.setenv("TONGDA_SMTP_HOST", "smtp.bank.example")
    monkeypatch.setenv("TONGDA_SMTP_FROM_ADDRESS", "noreply@bank.example")
    monkeypatch.setenv("TONGDA_SMTP_SECURITY", "ssl")
    with pytest.raises(ConfigError, match="TONGDA_SMTP_SECURITY"):
        build_provider(ChannelSettings(channel="email", provider="smtp"))

    monkeypatch.setenv("TONGDA_SMTP_SECURITY", "none")
    monkeypatch.setenv("TONGDA_SMTP_USERNAME", "tongda")
    monkeypatch.setenv("TONGDA_SMTP_PASSWORD", PASSWORD)
    with pytest.raises(ConfigError) as plaintext:
        build_provider(ChannelSettings(channel="email", provider="smtp"))
    assert "AUTH needs TLS" in str(plaintext.value) and PASSWORD not in str(plaintext.value)

    monkeypatch.setenv("TONGDA_SMTP_SECURITY", "tls")
    provider = build_provider(ChannelSettings(channel="email", provider="smtp"))
    assert isinstance(provider, SmtpProvider)
    assert provider.settings.server_port == 465
    assert provider.settings.envelope_from == "bounces@bank.example"
    assert PASSWORD not in repr(provider.settings)

    with pytest.raises(ConfigError, match="TONGDA_PROVIDER"):
        build_provider(ChannelSettings(channel="email", provider="ses"))


def test_every_smtp_setting_is_documented() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "providers-email.md").read_text()
    for name, info in SmtpSettings.model_fields.items():
        assert f"`TONGDA_SMTP_{name.upper()}`" in doc, name
        if "Secret" in str(info.annotation):
            assert f"`TONGDA_SMTP_{name.upper()}` **(secret)**" in doc, name


@pytest.mark.slow  # a process start (3 to 7 s here); build_provider's ConfigError is tested above
def test_the_service_exits_2_on_a_missing_smtp_setting() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGDA_")} | {
        **SIGNING_ENV,  # so that the missing SMTP setting is what stops it
        "TONGDA_PROVIDER": "smtp",
        "TONGDA_SMTP_FROM_ADDRESS": "noreply@bank.example",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.email"], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 2
    assert b"TONGDA_SMTP_HOST" in done.stderr + done.stdout


# --- through the channel service: outcomes on the router's inbox ------------------------


async def test_channel_service_publishes_delivered_and_bounced(
    make_settings: Callable[..., ChannelSettings], redis: Redis
) -> None:
    settings = make_settings("email", provider="smtp")
    await create_topics(settings)
    async with relay() as r:
        provider = SmtpProvider(smtp_settings(r.port, inbound_port=0, bounce_window_s=0.5))
        app = create_app(settings, provider)
        data = {"loan_id": "L-1", "amount_due": "1200.00", "currency": "CNY"}
        data["due_date"] = "2026-12-01"
        ok = dispatch("email", "ok@example.com", data=data)
        gone = dispatch("email", "gone@example.com", data=data)
        async with serving(app, settings.http_port):
            await produce(
                settings,
                settings.topics.dispatch("email"),
                [(d.customer_id.encode(), dumps(d)) for d in (ok, gone)],
            )
            while len(r.received) < 2:
                r.arrived.clear()
                await asyncio.wait_for(r.arrived.wait(), 15)
            verp = next(e.mail_from for e in r.received if e.rcpt_tos == ["gone@example.com"])
            assert provider.listener is not None and verp is not None
            # a real DSN comes seconds after the send; one racing the hand-over can be lost by
            # ReceiptBook.resolve (memory, then Redis, never memory again): wait for the save
            ref = verp.partition("+")[2].partition("@")[0]
            await wait_until(lambda: redis.exists(f"{settings.key_prefix}receipt:email:{ref}"))
            await deliver(provider.listener.port, dsn(verp), verp)
            records = await collect(settings, settings.topics.router_inbox, 2)
        outcomes = {
            orjson.loads(rec.value)["notification_id"]: orjson.loads(rec.value) for rec in records
        }
        assert outcomes[ok.notification_id]["outcome"] == "delivered"
        assert outcomes[gone.notification_id]["outcome"] == "bounced"
        assert outcomes[gone.notification_id]["provider"] == "smtp"
        assert "gone@example.com" not in outcomes[gone.notification_id]["detail"]
