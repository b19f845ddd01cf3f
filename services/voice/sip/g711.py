"""G.711 µ-law and A-law (ITU-T G.711) for 16-bit signed little-endian PCM, by table.

The per-sample functions follow the ITU-T reference code (µ-law on 14 bits, A-law on 13);
the encoders map every 16-bit sample through a 65,536-entry table built once, the decoders
through a 256-entry one. (The stdlib's `audioop` is deprecated and gone in Python 3.13.)
"""

from __future__ import annotations

import array
import sys
from functools import cache
from typing import Literal

Law = Literal["PCMU", "PCMA"]


def ulaw_encode_sample(sample: int) -> int:
    """One 16-bit sample → its µ-law byte."""
    pcm = sample >> 2
    mask = 0xFF
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    pcm = min(pcm, 8159) + 33
    segment = max(pcm.bit_length() - 6, 0)
    if segment >= 8:
        return 0x7F ^ mask
    return ((segment << 4) | ((pcm >> (segment + 1)) & 0x0F)) ^ mask


def ulaw_decode_sample(byte: int) -> int:
    """One µ-law byte → its 16-bit sample."""
    byte = ~byte & 0xFF
    exponent, mantissa = (byte >> 4) & 0x07, byte & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return -magnitude if byte & 0x80 else magnitude


def alaw_encode_sample(sample: int) -> int:
    """One 16-bit sample → its A-law byte."""
    pcm = sample >> 3
    mask = 0xD5
    if pcm < 0:
        pcm, mask = -pcm - 1, 0x55
    segment = max(pcm.bit_length() - 5, 0)
    shift = 1 if segment < 2 else segment
    return ((segment << 4) | ((pcm >> shift) & 0x0F)) ^ mask


def alaw_decode_sample(byte: int) -> int:
    """One A-law byte → its 16-bit sample."""
    byte ^= 0x55
    exponent, mantissa = (byte >> 4) & 0x07, byte & 0x0F
    if exponent == 0:
        magnitude = (mantissa << 4) + 8
    else:
        magnitude = ((mantissa << 4) + 0x108) << (exponent - 1)
    return magnitude if byte & 0x80 else -magnitude


@cache
def _encode_table(law: Law) -> bytes:
    encode = ulaw_encode_sample if law == "PCMU" else alaw_encode_sample
    # Indexed by the sample's 16 bits read unsigned: 0..32767 then -32768..-1.
    return bytes(encode(i if i < 32768 else i - 65536) for i in range(65536))


@cache
def _decode_table(law: Law) -> array.array[int]:
    decode = ulaw_decode_sample if law == "PCMU" else alaw_decode_sample
    return array.array("h", (decode(b) for b in range(256)))


def encode(pcm: bytes, law: Law) -> bytes:
    """16-bit signed little-endian mono PCM → G.711 bytes (one per sample)."""
    samples = array.array("H")
    samples.frombytes(pcm[: len(pcm) & ~1])
    if sys.byteorder == "big":
        samples.byteswap()
    table = _encode_table(law)
    return bytes(table[s] for s in samples)


def decode(data: bytes, law: Law) -> array.array[int]:
    """G.711 bytes → 16-bit samples."""
    table = _decode_table(law)
    return array.array("h", (table[b] for b in data))


def silence(law: Law) -> int:
    """The byte of a zero sample."""
    return _encode_table(law)[0]
