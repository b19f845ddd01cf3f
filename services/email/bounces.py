"""Mail that comes back: delivery status notifications (RFC 3464) and borrowers' replies.

`classify()` reads one raw RFC 5322 message, as the SMTP listener or the inbound webhook
received it, and tells what it is:
- a `Bounce`: a multipart/report; report-type=delivery-status, with the attempt's reference
  found in the VERP envelope recipient (`bounces+<ref>@`), the report's To /
  Delivered-To / X-Original-To, its Original-Envelope-Id, or the Message-ID of the
  returned message (message/rfc822 or text/rfc822-headers);
- a `Reply`: a person's message (not automatic: no null sender, no Auto-Submitted other
  than `no`, no bulk Precedence), its text without the quoted original and signature;
- `Ignored`, with the reason (an out-of-office answer, a non-standard bounce, ...).
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from html.parser import HTMLParser

from email_reply_parser import EmailReplyParser  # type: ignore[import-untyped]

from services.email.compose import REF_RE, ref_from_address, ref_from_message_id
from services.email.settings import SmtpSettings

MAX_TEXT = 10_000  # an inquiry's text, at most (as the sandbox's inbound endpoint)

# Quote headers email_reply_parser does not know: Chinese clients, Outlook.
_QUOTE_START = re.compile(
    r"^\s*(?:在.{1,80}写道[:：]|-{2,}\s*原始邮件\s*-{2,}|-{2,}\s*Original Message\s*-{2,}|"
    r"(?:发件人|From)[:：]\s*.+|_{10,})\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_UNSUBSCRIBE = re.compile(r"^\s*unsubscribe\s+(\S+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Bounce:
    """A delivery status notification about one of our attempts."""

    ref: str | None  # the attempt's reference; None when none could be found
    action: str  # failed, delayed, delivered, relayed, expanded
    status: str | None  # e.g. 5.1.1
    diagnostic: str | None  # e.g. "smtp; 550 5.1.1 user unknown"

    @property
    def failed(self) -> bool:
        """RFC 3464: `failed` means the message could not be delivered, for good."""
        return self.action == "failed"

    @property
    def detail(self) -> str:
        parts = [f"DSN {self.action}", self.status or "", self.diagnostic or ""]
        return " ".join(p for p in parts if p)[:500]


@dataclass(frozen=True)
class Reply:
    """A borrower's message to the reply address."""

    sender: str
    text: str
    message_id: str | None  # the reply's own Message-ID, to recognise it if it comes twice
    refs: list[str] = field(default_factory=list)  # our attempts it answers


@dataclass(frozen=True)
class Ignored:
    reason: str


Inbound = Bounce | Reply | Ignored


def parse(raw: bytes) -> EmailMessage:
    """A message parsed with the modern API (headers decoded, get_body())."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)  # so says policy.default
    return message


def classify(
    raw: bytes, settings: SmtpSettings, rcpt_tos: Sequence[str] = (), mail_from: str | None = None
) -> Inbound:
    """What one received message is (see the module's docstring)."""
    message = parse(raw)
    if message.get_content_type() == "multipart/report":
        if str(message.get_param("report-type", "")).lower() == "delivery-status":
            return _bounce(message, settings, rcpt_tos)
        return Ignored(f"a report of type {message.get_param('report-type')}")
    if mail_from is not None and mail_from.strip("<> ") == "":
        return Ignored("null sender and no delivery-status report (non-standard bounce)")
    auto = str(message.get("Auto-Submitted", "no")).strip().lower()
    if not auto.startswith("no"):
        return Ignored(f"automatic message (Auto-Submitted: {auto[:40]})")
    if str(message.get("Precedence", "")).strip().lower() in {"bulk", "junk", "list"}:
        return Ignored("bulk message (Precedence)")
    sender = parseaddr(str(message.get("From", "")))[1] or (mail_from or "")
    if "@" not in sender:
        return Ignored("no sender address")
    refs = _refs_of_reply(message, settings, rcpt_tos)
    unsubscribe = _UNSUBSCRIBE.match(str(message.get("Subject", "")))
    if unsubscribe:
        token = unsubscribe.group(1).lower()
        if REF_RE.match(token):
            refs.insert(0, token)
        return Reply(sender, "unsubscribe", _message_id(message), refs)
    text = reply_text(message) or str(message.get("Subject", "")).strip()
    if not text:
        return Ignored("empty message")
    return Reply(sender, text[:MAX_TEXT], _message_id(message), refs)


def _message_id(message: Message) -> str | None:
    value = message.get("Message-ID")
    return str(value).strip()[:200] if value else None


def _bounce(message: EmailMessage, settings: SmtpSettings, rcpt_tos: Sequence[str]) -> Bounce:
    blocks: list[Message] = []
    returned: Message | None = None
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/delivery-status":
            payload = part.get_payload()
            blocks = (
                [b for b in payload if isinstance(b, Message)] if isinstance(payload, list) else []
            )
        elif kind == "message/rfc822" and returned is None:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                returned = inner[0]
        elif kind == "text/rfc822-headers" and returned is None:
            payload = part.get_payload(decode=True)  # headers are ASCII whatever the charset
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            returned = HeaderParser().parsestr(text)
    per_message = blocks[0] if blocks else Message()
    recipients = blocks[1:] or [Message()]
    # One recipient per message (ours): its failure, else its first report.
    block = next((b for b in recipients if _field(b, "Action") == "failed"), recipients[0])
    candidates = [
        *(ref_from_address(a, settings) for a in rcpt_tos),
        *(ref_from_address(a, settings) for a in _header_addresses(message)),
        _envelope_ref(per_message),
        ref_from_message_id(str(returned.get("Message-ID", "")), settings) if returned else None,
    ]
    return Bounce(
        ref=next((c for c in candidates if c), None),
        action=(_field(block, "Action") or "unknown").lower(),
        status=_field(block, "Status"),
        diagnostic=_field(block, "Diagnostic-Code"),
    )


def _field(block: Message, name: str) -> str | None:
    value = block.get(name)
    return " ".join(str(value).split())[:300] if value else None


def _envelope_ref(per_message: Message) -> str | None:
    envid = (_field(per_message, "Original-Envelope-Id") or "").lower()
    return envid if REF_RE.match(envid) else None


def _header_addresses(message: Message) -> Iterable[str]:
    values = [
        str(v)
        for name in ("To", "Delivered-To", "X-Original-To")
        for v in message.get_all(name, [])
    ]
    return (addr for _, addr in getaddresses(values) if addr)


def _refs_of_reply(message: Message, settings: SmtpSettings, rcpt_tos: Sequence[str]) -> list[str]:
    ids = " ".join(str(message.get(h, "")) for h in ("In-Reply-To", "References")).split()
    refs = [r for r in (ref_from_message_id(i, settings) for i in ids) if r]
    refs += [r for r in (ref_from_address(a, settings) for a in rcpt_tos) if r]
    return list(dict.fromkeys(refs))


class _TextOfHtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style", "blockquote"}:
            self._skip += 1
        elif tag in {"br", "p", "div", "tr"}:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style", "blockquote"} and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(data)


def reply_text(message: EmailMessage) -> str:
    """The new text of a reply: the plain (else HTML) body without quote and signature."""
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        content = str(body.get_content())
    except (LookupError, UnicodeError, KeyError):  # an unknown charset: read it as UTF-8
        payload = body.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if body.get_content_type() == "text/html":
        parser = _TextOfHtml()
        parser.feed(content)
        content = "".join(parser.chunks)
    return strip_quoted(content)


def strip_quoted(text: str) -> str:
    """`text` up to the first quote header, then without `>` quotes and signature."""
    text = text.replace("\r\n", "\n")
    cut = _QUOTE_START.search(text)
    if cut:
        text = text[: cut.start()]
    reply: str = EmailReplyParser.parse_reply(text)
    return reply.strip()
