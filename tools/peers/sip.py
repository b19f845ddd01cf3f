"""The local voice peer: one SIPp UAS (Debian package `sip-tester`) answering every call the
way the voice sandbox does, steered by the called number (docs/CONTRACT.md).

`prepare()` writes the scenario (tools/peers/sipp_uas.xml with its parameters filled in)
and the answering machine's greeting (a pcap of a loud tone SIPp replays over RTP) into a
working directory; `sipp_argv()` is the command line the dev stack supervises
(tools/devstack/peers.py). SIPp runs with `-rtp_echo`, so the spoken message a call sends
comes back to the caller, as in the SIP tests. The pcap helpers here are also the SIP
tests' (RFC 4733 DTMF events, a tone).

| number ends | SIP | outcome |
|---|---|---|
| 0001 | 180, 486 Busy Here | busy |
| 0002 | 180 until the caller's CANCEL, 487 | no_answer (the provider's ring timeout) |
| 0003 | 404 Not Found | rejected |
| 0005 | 486 on the first two calls, then 200 (see below) | busy, busy, delivered |
| 0006 | 200, then a greeting of `greeting_s` | voicemail (the provider's heuristic) |
| other | 200, BYE after `hangup_ms` | delivered |

The sandbox counts the calls to 0005 per notification; SIP carries no notification id, so
the peer counts per number and starts again after `reset_s` seconds without a call (the dev
stack makes that four simulated hours: longer than a call-back, shorter than a night).
"""

from __future__ import annotations

import array
import math
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from services.voice.sip import g711

SCENARIO = Path(__file__).with_name("sipp_uas.xml")


@dataclass(frozen=True)
class SippPeer:
    """Where SIPp listens and how its calls behave."""

    port: int  # SIP (UDP) on 127.0.0.1
    media_port: int  # RTP: media_port and media_port + 2 (even)
    workdir: Path
    reset_s: float = 5.0
    hangup_ms: int = 2000
    greeting_s: float = 3.0

    @property
    def scenario(self) -> Path:
        return self.workdir / "uas.xml"

    def prepare(self) -> None:
        """Write the scenario and the greeting into `workdir`."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        greeting = self.workdir / "greeting.pcap"
        write_pcap(greeting, tone_packets(self.greeting_s))
        text = (
            SCENARIO.read_text(encoding="iso-8859-1")
            .replace("RESET_S", f"{self.reset_s:.3f}")
            .replace("HANGUP_MS", str(self.hangup_ms))
            .replace("GREETING_PCAP", str(greeting.resolve()))
        )
        self.scenario.write_text(text, encoding="iso-8859-1")

    def argv(self, binary: str | None = None) -> list[str]:
        """SIPp as a UAS on loopback, until stopped."""
        sipp = binary or shutil.which("sipp") or "sipp"
        return [
            sipp, "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port),
            "-mp", str(self.media_port), "-rtp_echo", "-nostdin", "-trace_err",
            "-error_file", str(self.workdir / "errors.log"),
        ]  # fmt: skip


def write_pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    """RTP packets (time offset, bytes) → a pcap (Ethernet/IPv4/UDP) for play_pcap_audio."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for at, rtp in packets:
        udp = struct.pack("!HHHH", 4000, 4002, 8 + len(rtp), 0) + rtp
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, b"\x7f\0\0\1", b"\x7f\0\0\1"
        )
        frame = b"\0" * 12 + b"\x08\x00" + ip + udp
        seconds, micros = int(at), round((at % 1) * 1e6)
        out.append(struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def rtp_header(pt: int, seq: int, ts: int, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, 0x5EED)


def dtmf_packets(digit: str, pt: int = 101) -> list[tuple[float, bytes]]:
    """One RFC 4733 event: 4 packets of growing duration, then the end packet three times."""
    event = "0123456789*#".index(digit)
    packets = []
    for i in range(1, 8):
        end = i >= 5
        payload = struct.pack("!BBH", event, (0x80 if end else 0) | 10, 160 * min(i, 5))
        packets.append((i * 0.02, rtp_header(pt, i, 8000, marker=i == 1) + payload))
    return packets


def tone_packets(seconds: float, law: g711.Law = "PCMU") -> list[tuple[float, bytes]]:
    """A loud 440 Hz tone in 20 ms RTP frames (an answering machine's greeting)."""
    packets = []
    for i in range(round(seconds / 0.02)):
        samples = array.array(
            "h",
            (int(12000 * math.sin(2 * math.pi * 440 * (i * 160 + n) / 8000)) for n in range(160)),
        )
        payload = g711.encode(samples.tobytes(), law)
        packets.append((i * 0.02, rtp_header(0, i + 1, i * 160, marker=i == 0) + payload))
    return packets
