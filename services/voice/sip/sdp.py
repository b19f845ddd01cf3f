"""SDP (RFC 4566) offer/answer for one audio stream: G.711 and RFC 4733 telephone-event."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from services.voice.sip.g711 import Law

STATIC = {0: "PCMU", 8: "PCMA"}
PAYLOAD = {"PCMU": 0, "PCMA": 8}


class SdpError(ValueError):
    """An answer without a usable audio stream."""


@dataclass(frozen=True)
class MediaAnswer:
    """What the callee's SDP answer chose."""

    host: str
    port: int
    codec: Law
    payload_type: int
    dtmf_payload_type: int | None


def offer(host: str, port: int, first: Law, dtmf_pt: int) -> bytes:
    """Our offer: both G.711 laws (`first` preferred) and telephone-event 0-16."""
    order = [PAYLOAD[first], PAYLOAD["PCMA" if first == "PCMU" else "PCMU"]]
    session = secrets.randbelow(2**31)
    lines = [
        "v=0",
        f"o=tongda {session} {session} IN IP4 {host}",
        "s=tongda",
        f"c=IN IP4 {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {' '.join(map(str, order))} {dtmf_pt}",
        *(f"a=rtpmap:{pt} {STATIC[pt]}/8000" for pt in order),
        f"a=rtpmap:{dtmf_pt} telephone-event/8000",
        f"a=fmtp:{dtmf_pt} 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def parse_answer(body: bytes) -> MediaAnswer:
    """The answer's audio address, first G.711 payload type and telephone-event type."""
    session_host: str | None = None
    media_host: str | None = None
    port: int | None = None
    formats: list[int] = []
    rtpmap: dict[int, str] = {}
    in_audio = False
    for raw in body.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        kind, _, value = line.partition("=")
        if kind == "m":
            parts = value.split()
            in_audio = len(parts) >= 4 and parts[0] == "audio" and port is None
            if in_audio:
                try:
                    port = int(parts[1])
                    formats = [int(p) for p in parts[3:] if p.isdigit()]
                except ValueError:
                    raise SdpError("bad m= line") from None
        elif kind == "c":
            parts = value.split()
            if len(parts) >= 3:
                if in_audio:
                    media_host = parts[2].split("/")[0]
                elif port is None:
                    session_host = parts[2].split("/")[0]
        elif kind == "a" and in_audio and value.startswith("rtpmap:"):
            number, _, encoding = value[7:].partition(" ")
            if number.isdigit():
                rtpmap[int(number)] = encoding.split("/")[0].strip()
    host = media_host or session_host
    if port is None or host is None or port == 0:
        raise SdpError("no audio stream in the answer")
    for pt in formats:
        name = rtpmap.get(pt) or STATIC.get(pt)
        if name is not None and name.upper() in PAYLOAD:
            codec: Law = "PCMU" if name.upper() == "PCMU" else "PCMA"
            dtmf = next((p for p, n in rtpmap.items() if n.lower() == "telephone-event"), None)
            return MediaAnswer(host, port, codec, pt, dtmf)
    raise SdpError("the answer chose no G.711 codec")
