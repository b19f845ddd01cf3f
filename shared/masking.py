"""Masking of phone numbers, emails and tokens for logs, records and API answers."""

from __future__ import annotations

import re

# E.164 with its plus, or a bare run of 11 to 15 digits (a national mobile number); dates,
# times and short ids are left alone.
_PHONE_RE = re.compile(r"(?<![\w.])(?:\+\d{7,15}|\d{11,15})(?![\w.])")
_EMAIL_RE = re.compile(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+")


def mask_phone(phone: str) -> str:
    """`+8613800138000` → `+86138****8000`: country code and prefix, then the last four."""
    digits = phone.lstrip("+")
    plus = "+" if phone.startswith("+") else ""
    if len(digits) <= 6:
        return plus + "*" * len(digits)
    head = digits[:5] if len(digits) > 10 else digits[:2]
    return f"{plus}{head}****{digits[-4:]}"


def mask_email(email: str) -> str:
    """`zhang.wei@example.com` → `z***@example.com`."""
    local, at, domain = email.partition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


def mask_token(token: str) -> str:
    """A push token or secret → its first four characters and a marker."""
    return f"{token[:4]}…" if len(token) > 8 else "****"


def mask_address(channel: str | None, address: str | None) -> str | None:
    """Mask an address by the kind of channel it belongs to."""
    if address is None:
        return None
    if channel == "email" or "@" in address:
        return mask_email(address)
    if channel == "push":
        return mask_token(address)
    return mask_phone(address)


def scrub(text: str) -> str:
    """Mask every phone number, email and bearer token found in free text (log lines)."""
    text = _BEARER_RE.sub(r"\1****", text)
    text = _EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _PHONE_RE.sub(lambda m: mask_phone(m.group(0)), text)
