"""Masking of phone numbers, emails and tokens for logs, records and API answers."""

from __future__ import annotations

import re

# A phone number as people write it: digits, optionally after a `+`, in groups separated by
# single spaces or dashes, a group possibly in parentheses (`+86 138 0013 8000`,
# `138-0013-8000`, `+1 (415) 555-0100`). A candidate counts as a phone with its plus and 7 to
# 15 digits, or without it and 11 to 15 digits; dates, times, IP addresses and short ids are
# left alone (their digits are fewer, or dots and colons join them).
_PHONE_RE = re.compile(r"(?<![\w.+])\+?\(?\d+\)?(?:[ \-]\(?\d+\)?)*(?!\w|\.\d)")
_GROUP_SPLIT_RE = re.compile(r"([ \-])")
_DIGITS_RE = re.compile(r"\d+")
MAX_PHONE_DIGITS = 15
_EMAIL_RE = re.compile(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")
_BEARER_RE = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=\-]+")


def mask_phone(phone: str) -> str:
    """`+8613800138000` → `+86138****8000`: country code and prefix, then the last four.

    Long numbers (11 digits or more) show at most their first 5 and last 4 digits; shorter
    ones keep at least 4 digits hidden (`+4420123` → `+44****23`); 6 digits or fewer show
    none. Spaces and dashes are dropped first.
    """
    plus = "+" if phone.lstrip().startswith("+") else ""
    digits = "".join(c for c in phone if c.isdigit())
    n = len(digits)
    if n <= 6:
        return plus + "*" * n
    if n > 10:
        head, tail = 5, 4
    else:
        tail = min(4, n - 6)
        head = min(2, n - 4 - tail)
    return f"{plus}{digits[:head]}****{digits[n - tail :] if tail else ''}"


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
    return _PHONE_RE.sub(_mask_candidate, text)


def _is_phone(candidate: str) -> bool:
    """7 to 15 digits after a `+`, else 11 to 15; written in groups, at most one of a single
    digit (`+33 6 12 34 56 78`), so that lists of small numbers are not taken for phones."""
    groups = _DIGITS_RE.findall(candidate)
    digits = sum(len(g) for g in groups)
    low = 7 if candidate.lstrip("(").startswith("+") else 11
    return low <= digits <= MAX_PHONE_DIGITS and sum(len(g) == 1 for g in groups) <= 1


def _mask_candidate(match: re.Match[str]) -> str:
    """Mask a run of digit groups: whole if it is one phone number, else each longest run of
    its groups that is one (`ids 12 34 138 0013 8000` masks the last three)."""
    text = match.group(0)
    if _is_phone(text):
        return mask_phone(text)
    parts = _GROUP_SPLIT_RE.split(text)  # group, separator, group, …
    groups, seps = parts[0::2], parts[1::2]
    out: list[str] = []
    i = 0
    while i < len(groups):
        # the longest run from group i that is a phone (a phone spans at most 15 groups)
        for j in range(min(len(groups), i + MAX_PHONE_DIGITS), i, -1):
            run = "".join(g + (seps[k] if k < j - 1 else "") for k, g in enumerate(groups[i:j], i))
            if _is_phone(run):
                out.append(mask_phone(run))
                i = j
                break
        else:
            out.append(groups[i])
            i += 1
        if i < len(groups):
            out.append(seps[i - 1])  # the separator before the next group
    return "".join(out)
