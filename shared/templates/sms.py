"""SMS length: the encoding a text needs and how many segments it is sent as.

GSM 03.38 (GSM-7): 160 septets in one message, 153 per segment once concatenated (the user
data header takes 7); the extension-table characters (``^ { } \\ [ ~ ] | €`` and form feed)
take two septets (escape + character), and an escape pair is never split across segments.
Any character outside the GSM-7 sets makes the whole text UCS-2: 70 UTF-16 code units in one
message, 67 per segment; a character outside the BMP (most emoji) takes two code units and a
surrogate pair is never split across segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The GSM 03.38 default alphabet in code order (0x1B is the escape to the extension table),
# and the extension table: character → its code after the escape.
GSM7_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION_CODES = {"\x0c": 0x0A, "^": 0x14, "{": 0x28, "}": 0x29, "\\": 0x2F, "[": 0x3C,
                        "~": 0x3D, "]": 0x3E, "|": 0x40, "€": 0x65}  # fmt: skip
GSM7_BASIC = frozenset(GSM7_TABLE) - {"\x1b"}
GSM7_EXTENSION = frozenset(GSM7_EXTENSION_CODES)

Encoding = Literal["GSM-7", "UCS-2"]

# encoding → (units in a single message, units per segment of a concatenated message)
LIMITS: dict[Encoding, tuple[int, int]] = {"GSM-7": (160, 153), "UCS-2": (70, 67)}


@dataclass(frozen=True)
class SmsLength:
    """How a text goes out: its encoding, its length in that encoding's units, its segments."""

    encoding: Encoding
    chars: int  # GSM-7 septets (extension characters count 2) or UTF-16 code units
    segments: int


def _units(text: str) -> tuple[Encoding, list[int]]:
    """The encoding and the size in units of each character (never split across segments)."""
    if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text):
        return "GSM-7", [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return "UCS-2", [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def sms_segments(text: str) -> SmsLength:
    """The encoding, length and segment count of `text` sent as one SMS."""
    encoding, units = _units(text)
    single, per_segment = LIMITS[encoding]
    total = sum(units)
    if total <= single:
        return SmsLength(encoding, total, 1)
    segments, used = 1, 0
    for size in units:  # fill segments greedily; a pair of units never straddles two
        if used + size > per_segment:
            segments, used = segments + 1, 0
        used += size
    return SmsLength(encoding, total, segments)
