"""RTP (RFC 3550) for one call: paced G.711 sending, and a receiver that reads RFC 4733 DTMF
events and the energy of the callee's audio (for the answering-machine heuristic)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import random
import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from services.voice.sip import g711
from services.voice.sip.g711 import Law

FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FRAME_S = 0.02
DTMF_EVENTS = "0123456789*#ABCD"


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    marker: bool
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes

    def encode(self) -> bytes:
        return (
            struct.pack(
                "!BBHII",
                0x80,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence & 0xFFFF,
                self.timestamp & 0xFFFFFFFF,
                self.ssrc,
            )
            + self.payload
        )

    @classmethod
    def decode(cls, data: bytes) -> RtpPacket | None:
        """None when `data` is not an RTP version 2 packet."""
        if len(data) < 12 or data[0] >> 6 != 2:
            return None
        first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
        offset = 12 + 4 * (first & 0x0F)
        if first & 0x10:  # header extension
            if len(data) < offset + 4:
                return None
            offset += 4 + 4 * struct.unpack_from("!H", data, offset + 2)[0]
        end = len(data)
        if first & 0x20 and end > offset:  # padding
            end -= data[-1]
        if end < offset:
            return None
        return cls(second & 0x7F, bool(second & 0x80), seq, ts, ssrc, data[offset:end])


def dtmf_event(payload: bytes) -> tuple[str, bool] | None:
    """An RFC 4733 telephone-event payload → (digit, end bit); None for other events."""
    if len(payload) < 4 or payload[0] >= len(DTMF_EVENTS):
        return None
    return DTMF_EVENTS[payload[0]], bool(payload[1] & 0x80)


def rms(samples: Sequence[int]) -> float:
    """The root mean square of 16-bit samples."""
    return math.sqrt(sum(v * v for v in samples) / len(samples)) if samples else 0.0


@dataclass
class RtpStats:
    sent: int = 0
    received_audio: int = 0
    received_dtmf: int = 0
    echoed_message_frames: int = 0  # received frames equal to a frame of our message
    digits: list[str] = field(default_factory=list)


class RtpSession(asyncio.DatagramProtocol):
    """One call's RTP socket. The remote address comes from the SDP answer."""

    def __init__(self, law: Law = "PCMU") -> None:
        self.law: Law = law
        self.payload_type = g711_pt(law)
        self.dtmf_payload_type: int | None = None
        self.remote: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.ssrc = secrets.randbits(32)
        self._sequence = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self.stats = RtpStats()
        self.stop: asyncio.Event | None = None  # set when a DTMF digit arrives
        self.on_energy: Callable[[float], None] | None = None  # each received audio frame
        self._dtmf_seen: set[tuple[int, int]] = set()  # (ssrc, timestamp) of ended events
        self._message_frames: set[bytes] = set()

    @classmethod
    async def open(cls, host: str, port_min: int, port_max: int) -> RtpSession:
        """Bind an even port in [port_min, port_max], starting at a random one."""
        loop = asyncio.get_running_loop()
        ports = list(range(port_min + (port_min & 1), port_max + 1, 2))
        start = random.randrange(len(ports))
        for port in ports[start:] + ports[:start]:
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.bind((host, port))
                except OSError:
                    sock.close()
                    raise
                _, session = await loop.create_datagram_endpoint(cls, sock=sock)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            session.port = port
            return session
        raise OSError(errno.EADDRINUSE, "no free RTP port in the configured range")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def configure(self, host: str, port: int, law: Law, pt: int, dtmf_pt: int | None) -> None:
        """Use the SDP answer's address and payload types."""
        self.remote = (host, port)
        self.law, self.payload_type, self.dtmf_payload_type = law, pt, dtmf_pt

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.remote is None or addr[0] != self.remote[0]:
            return  # only media from the host the SDP answer named
        packet = RtpPacket.decode(data)
        if packet is None:
            return
        if self.dtmf_payload_type is not None and packet.payload_type == self.dtmf_payload_type:
            self.stats.received_dtmf += 1
            event = dtmf_event(packet.payload)
            if event is None or not event[1]:
                return
            key = (packet.ssrc, packet.timestamp)  # the end packet comes three times
            if key not in self._dtmf_seen:
                self._dtmf_seen.add(key)
                self.stats.digits.append(event[0])
                if self.stop is not None:
                    self.stop.set()
        elif packet.payload_type == self.payload_type:
            self.stats.received_audio += 1
            if packet.payload in self._message_frames:
                self.stats.echoed_message_frames += 1
            if self.on_energy is not None:
                self.on_energy(rms(g711.decode(packet.payload, self.law)))

    def _send_frame(self, payload: bytes, marker: bool) -> None:
        if self.transport is None or self.remote is None:
            return
        packet = RtpPacket(
            self.payload_type, marker, self._sequence, self._timestamp, self.ssrc, payload
        )
        with contextlib.suppress(OSError):
            self.transport.sendto(packet.encode(), self.remote)
        self.stats.sent += 1
        self._sequence = (self._sequence + 1) & 0xFFFF
        self._timestamp = (self._timestamp + len(payload)) & 0xFFFFFFFF

    async def play(self, pcm: bytes, stop: asyncio.Event) -> bool:
        """Send `pcm` (8 kHz 16-bit mono) as 20 ms frames paced in real time; stop early
        when `stop` is set. True when played to the end."""
        encoded = g711.encode(pcm, self.law)
        frames = [
            encoded[i : i + FRAME_SAMPLES].ljust(FRAME_SAMPLES, bytes([g711.silence(self.law)]))
            for i in range(0, len(encoded), FRAME_SAMPLES)
        ]
        self._message_frames.update(f for f in frames if len(set(f)) > 1)
        return await self._paced(frames, stop)

    async def play_silence(self, seconds: float, stop: asyncio.Event) -> bool:
        """Send silence for `seconds` (keeps the media path open); True unless stopped."""
        frame = bytes([g711.silence(self.law)]) * FRAME_SAMPLES
        return await self._paced([frame] * max(1, round(seconds / FRAME_S)), stop)

    async def _paced(self, frames: list[bytes], stop: asyncio.Event) -> bool:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, frame in enumerate(frames):
            if stop.is_set():
                return False
            self._send_frame(frame, marker=index == 0)
            delay = start + (index + 1) * FRAME_S - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the stop flag is read every frame (20 ms)
        return not stop.is_set()


def g711_pt(law: Law) -> int:
    return 0 if law == "PCMU" else 8
