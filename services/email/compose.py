"""One attempt's email: its reference (Message-ID, VERP token) and its MIME message.

Every attempt gets a reference `<digest>.<leg>.<attempt>`, the digest a keyed hash of the
notification id, so that:
- the Message-ID `<ref@domain>` is the same whenever the same attempt is sent again, and
  every attempt of one notification shares the digest (a resend is recognisable), while
  the header carries no notification or customer id;
- the envelope sender `bounces+<ref>@domain` (VERP) brings a bounce (DSN) back to the attempt;
- a reply's In-Reply-To brings it back to the notification (through Redis, see smtp.py).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import re
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr

from services.email.settings import SmtpSettings
from shared.channel.provider import Message, utcnow
from shared.contract.models import Dispatch

REF_RE = re.compile(r"^[0-9a-f]{24}\.\d{1,3}\.\d{1,4}$")


def digest(key: bytes, notification_id: str) -> str:
    """The keyed hash standing for a notification id in headers (24 hex digits)."""
    return hmac.new(key, f"notification:{notification_id}".encode(), hashlib.sha256).hexdigest()[
        :24
    ]


def message_ref(key: bytes, dispatch: Dispatch) -> str:
    """The attempt's reference: the provider message id, Message-ID and VERP token."""
    return f"{digest(key, dispatch.notification_id)}.{dispatch.leg}.{dispatch.attempt}"


def message_id(ref: str, settings: SmtpSettings) -> str:
    """`<ref@domain>`."""
    return f"<{ref}@{settings.id_domain}>"


def verp_address(ref: str, settings: SmtpSettings) -> str:
    """The envelope sender carrying `ref`: `bounces+<ref>@domain`."""
    local, _, domain = settings.envelope_from.rpartition("@")
    return f"{local}+{ref}@{domain}"


def ref_from_address(address: str, settings: SmtpSettings) -> str | None:
    """The reference in a VERP address (`bounces+<ref>@domain`), or None."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    base_local, _, base_domain = settings.envelope_from.rpartition("@")
    base, plus, token = local.partition("+")
    if plus and base.lower() == base_local.lower() and domain.lower() == base_domain.lower():
        token = token.lower()
        return token if REF_RE.match(token) else None
    return None


def ref_from_message_id(value: str, settings: SmtpSettings) -> str | None:
    """The reference in one of our Message-IDs (`<ref@domain>`), or None."""
    local, _, domain = value.strip().strip("<>").rpartition("@")
    if domain.lower() != settings.id_domain.lower():
        return None
    local = local.lower()
    return local if REF_RE.match(local) else None


def _html_from_text(text: str) -> str:
    paragraphs = "".join(
        f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in text.split("\n\n") if p
    )
    return f'<!doctype html><html><body style="font-family:sans-serif">{paragraphs}</body></html>'


def list_unsubscribe(ref: str, settings: SmtpSettings) -> str:
    """The List-Unsubscribe value: the configured template, or a mailto: to the reply (or
    From) address with `unsubscribe <ref>` as its subject."""
    if settings.list_unsubscribe:
        return settings.list_unsubscribe.replace("{token}", ref)
    address = parseaddr(settings.reply_to or settings.from_address)[1]
    return f"<mailto:{address}?subject=unsubscribe%20{ref}>"


def build_message(
    dispatch: Dispatch, message: Message, ref: str, settings: SmtpSettings
) -> EmailMessage:
    """The multipart/alternative (text, HTML) email for one attempt."""
    mail = EmailMessage()
    mail["From"] = settings.from_address
    mail["To"] = dispatch.recipient
    mail["Subject"] = message.subject
    mail["Date"] = format_datetime(utcnow())
    mail["Message-ID"] = message_id(ref, settings)
    if settings.reply_to:
        mail["Reply-To"] = settings.reply_to
    unsubscribe = list_unsubscribe(ref, settings)
    mail["List-Unsubscribe"] = unsubscribe
    if "<https://" in unsubscribe:
        mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"  # RFC 8058
    mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders do not answer
    mail.set_content(message.body, subtype="plain", charset="utf-8")
    mail.add_alternative(message.html or _html_from_text(message.body), subtype="html")
    return mail
