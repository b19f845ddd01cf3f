"""SIP messages (RFC 3261 §7): parsing what arrives over UDP and building what we send.

Only what a UAC needs: start line, headers (compact forms expanded, comma-separated values
split), header parameters (`tag`, `branch`) and the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

COMPACT = {
    "v": "Via",
    "f": "From",
    "t": "To",
    "i": "Call-ID",
    "m": "Contact",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
}
MULTI = {"via", "route", "record-route"}  # headers whose values may be comma-joined


class SipParseError(ValueError):
    """A datagram that is not a well-formed SIP message."""


@dataclass
class SipMessage:
    """A request (`method`, `uri`) or a response (`status`, `reason`)."""

    method: str | None = None
    uri: str | None = None
    status: int | None = None
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return self.method is not None

    def get(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive)."""
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        """Every value of header `name`, comma-joined values split for Via and routes."""
        lower = name.lower()
        out: list[str] = []
        for key, value in self.headers:
            if key.lower() == lower:
                out.extend(split_commas(value) if lower in MULTI else [value])
        return out

    def add(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    @property
    def cseq(self) -> tuple[int, str]:
        number, _, method = (self.get("CSeq") or "").strip().partition(" ")
        try:
            return int(number), method.strip().upper()
        except ValueError:
            raise SipParseError("bad CSeq") from None

    @property
    def branch(self) -> str | None:
        via = self.get("Via")
        return param(via, "branch") if via else None

    def encode(self) -> bytes:
        """The message on the wire, Content-Length set from the body."""
        if self.method is not None:
            start = f"{self.method} {self.uri} SIP/2.0"
        else:
            start = f"SIP/2.0 {self.status} {self.reason}"
        lines = [start]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() != "content-length"]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


_PARAM_RE = re.compile(r";\s*([A-Za-z0-9._!%*+`'~-]+)\s*(?:=\s*(\"[^\"]*\"|[^;,\s>]*))?")


def param(value: str, name: str) -> str | None:
    """A header parameter's value, e.g. `tag` of a To header (after any `<uri>`)."""
    tail = value[value.rfind(">") + 1 :] if ">" in value else value
    for match in _PARAM_RE.finditer(tail):
        if match.group(1).lower() == name.lower():
            return (match.group(2) or "").strip('"')
    return None


def uri_of(value: str) -> str:
    """The URI in a name-addr (`"x" <sip:a@b>;tag=1` → `sip:a@b`) or addr-spec."""
    if "<" in value:
        return value[value.index("<") + 1 : value.index(">")]
    return value.split(";", 1)[0].strip()


def parse(data: bytes) -> SipMessage:
    """One datagram → a SipMessage; SipParseError when it is not SIP."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise SipParseError("not UTF-8") from None
    lines = text.replace("\r\n", "\n").split("\n")
    start, msg = lines[0].strip(), SipMessage()
    if start.startswith("SIP/2.0 "):
        code, _, reason = start[8:].partition(" ")
        if not (code.isdigit() and len(code) == 3):
            raise SipParseError("bad status line")
        msg.status, msg.reason = int(code), reason
    else:
        parts = start.split(" ")
        if len(parts) != 3 or parts[2] != "SIP/2.0" or not parts[0].isalpha():
            raise SipParseError("bad request line")
        msg.method, msg.uri = parts[0].upper(), parts[1]
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and msg.headers:  # folded continuation
            name, value = msg.headers[-1]
            msg.headers[-1] = (name, f"{value} {line.strip()}")
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError("bad header line")
        name = name.strip()
        msg.headers.append((COMPACT.get(name.lower(), name), value.strip()))
    length = msg.get("Content-Length")
    if length is not None and length.strip().isdigit():
        body = body[: int(length)]
    msg.body = body
    for required in ("Via", "CSeq", "Call-ID", "From", "To"):
        if msg.get(required) is None:
            raise SipParseError(f"missing {required}")
    msg.cseq  # noqa: B018 (validates CSeq)
    return msg
