"""SMS text: GSM 03.38 or UCS-2, split into concatenated parts with a UDH, and back.

A text every character of which is in the GSM 03.38 alphabet (basic table or its extension
table) goes as data_coding 0x00, one septet per octet (unpacked, as SMSCs expect over SMPP):
160 septets in one message, 153 per part when concatenated. Anything else (Chinese) goes as
UCS-2 (data_coding 0x08, UTF-16BE): 70 characters in one message, 67 per part. Parts carry
an 8-bit-reference concatenation UDH (05 00 03 ref total seq) and esm_class UDHI (0x40); an
escape pair (GSM) or a surrogate pair (UTF-16) is never cut between parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.sms.smpp.pdu import DC_DEFAULT, DC_LATIN1, DC_UCS2, ESM_UDHI
from shared.templates.sms import GSM7_EXTENSION_CODES, GSM7_TABLE, LIMITS

GSM_BASIC = GSM7_TABLE  # one definition of the alphabet: shared/templates/sms.py
GSM_EXTENSION = GSM7_EXTENSION_CODES
_BASIC_INDEX = {ch: i for i, ch in enumerate(GSM_BASIC) if ch != "\x1b"}
_EXTENSION_CHAR = {code: ch for ch, code in GSM_EXTENSION.items()}
ESCAPE = 0x1B

GSM_SINGLE, GSM_PART = LIMITS["GSM-7"]
UCS2_SINGLE, UCS2_PART = LIMITS["UCS-2"]  # in UTF-16 code units (two octets each)
MAX_PARTS = 255


class TextTooLong(ValueError):
    """More than 255 parts."""


@dataclass(frozen=True)
class Encoded:
    """A text ready for submit_sm: its data_coding, esm_class and one payload per part."""

    data_coding: int
    esm_class: int
    parts: list[bytes]


def gsm_chars(text: str) -> list[bytes] | None:
    """Each character's GSM 03.38 septets (one octet, or escape + one); None if one is not."""
    out: list[bytes] = []
    for ch in text:
        if ch in _BASIC_INDEX:
            out.append(bytes((_BASIC_INDEX[ch],)))
        elif ch in GSM_EXTENSION:
            out.append(bytes((ESCAPE, GSM_EXTENSION[ch])))
        else:
            return None
    return out


def _ucs2_chars(text: str) -> list[bytes]:
    return [ch.encode("utf-16-be") for ch in text]  # 2 octets, or 4 for a surrogate pair


def _chunks(chars: list[bytes], limit: int, unit: int) -> list[bytes]:
    """Group encoded characters into chunks of at most `limit` units of `unit` octets."""
    chunks: list[bytes] = []
    current = bytearray()
    for ch in chars:
        if len(current) + len(ch) > limit * unit:
            chunks.append(bytes(current))
            current = bytearray()
        current += ch
    chunks.append(bytes(current))
    return chunks


def encode_text(text: str, ref: int) -> Encoded:
    """`text` as one or more submit_sm payloads; `ref` (0-255) is the concatenation reference."""
    gsm = gsm_chars(text)
    if gsm is not None:
        data_coding, chars, single, part, unit = DC_DEFAULT, gsm, GSM_SINGLE, GSM_PART, 1
    else:
        data_coding, chars = DC_UCS2, _ucs2_chars(text)
        single, part, unit = UCS2_SINGLE, UCS2_PART, 2
    if sum(len(c) for c in chars) <= single * unit:
        return Encoded(data_coding, 0, [b"".join(chars)])
    chunks = _chunks(chars, part, unit)
    if len(chunks) > MAX_PARTS:
        raise TextTooLong(f"{len(chunks)} parts")
    total = len(chunks)
    parts = [bytes((5, 0, 3, ref & 0xFF, total, seq)) + c for seq, c in enumerate(chunks, 1)]
    return Encoded(data_coding, ESM_UDHI, parts)


@dataclass(frozen=True)
class Concat:
    """A part's concatenation header: reference, total parts, this part's number (1-based)."""

    ref: int
    total: int
    seq: int


def split_udh(payload: bytes) -> tuple[Concat | None, bytes]:
    """A UDHI payload's concatenation header (8- or 16-bit reference, if any) and its text."""
    if not payload:
        return None, payload
    udh_len = payload[0]
    udh, rest = payload[1 : 1 + udh_len], payload[1 + udh_len :]
    i = 0
    while i + 2 <= len(udh):
        iei, length = udh[i], udh[i + 1]
        data = udh[i + 2 : i + 2 + length]
        if iei == 0x00 and length == 3:
            return Concat(data[0], data[1], data[2]), rest
        if iei == 0x08 and length == 4:
            return Concat((data[0] << 8) | data[1], data[2], data[3]), rest
        i += 2 + length
    return None, rest


def decode_payload(data_coding: int, payload: bytes) -> str:
    """Text from a deliver_sm payload without its UDH."""
    if data_coding == DC_UCS2:
        return payload.decode("utf-16-be", errors="replace")
    if data_coding == DC_LATIN1:
        return payload.decode("latin-1")
    if data_coding == DC_DEFAULT:
        return gsm_decode(payload)
    return payload.decode("latin-1")  # 8-bit binary or an unknown scheme: keep the octets


def gsm_decode(octets: bytes) -> str:
    """Unpacked GSM 03.38 septets to text."""
    out: list[str] = []
    escaped = False
    for b in octets:
        if escaped:
            out.append(_EXTENSION_CHAR.get(b, " "))
            escaped = False
        elif b == ESCAPE:
            escaped = True
        elif b < len(GSM_BASIC):
            out.append(GSM_BASIC[b])
        else:
            out.append("?")
    return "".join(out)


_RECEIPT_FIELD = re.compile(r"(id|sub|dlvrd|submit date|done date|stat|err|text):")


def parse_receipt(text: str) -> dict[str, str]:
    """The fields of a delivery receipt's text (SMPP 3.4 Appendix B):
    `id:IIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:DDDDDDD
    err:E text:...`; keys as named there, values stripped; missing fields absent."""
    matches: list[re.Match[str]] = []
    for m in _RECEIPT_FIELD.finditer(text):
        matches.append(m)
        if m.group(1) == "text":  # free text last: whatever it holds is not a field
            break
    fields: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        fields[m.group(1)] = text[m.end() : end].strip()
    return fields
