"""The SIP voice provider against SIPp UAS scenarios (tests/sipp/*.xml) on loopback.

SIPp runs with `-rtp_echo`: every RTP packet our call sends to the callee comes back, so a
frame of the spoken message returning proves the audio reached the callee. SIPp sends RFC
4733 DTMF and an answering machine's greeting by replaying pcap files the tests write.
SIPp's exit status says the scenario ran to its end (e.g. it got the CANCEL and the ACK).
"""

from __future__ import annotations

import array
import asyncio
import logging
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from channel_support import collect, create_topics, dispatch, produce, serving
from redis.asyncio import Redis

from services.voice.providers import build_provider
from services.voice.sip import g711, sdp
from services.voice.sip.call import CallResult, outcome_for_status
from services.voice.sip.digest import authorization, parse_challenge
from services.voice.sip.message import SipMessage, parse
from services.voice.sip.provider import CALLBACK_TEXT, SipProvider
from services.voice.sip.settings import SipSettings
from services.voice.sip.transport import response_to
from services.voice.sip.tts import Tts, TtsError
from shared.channel.app import create_app
from shared.channel.provider import Accepted, Completed, Inbound, ProviderContext, Receipt
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome
from shared.errors import ConfigError
from shared.templates import Message
from tools.peers.sip import dtmf_packets, tone_packets, write_pcap

pytest_plugins = ["channel_support"]

SCENARIOS = Path(__file__).parent / "sipp"
NUMBER = "+8613800138000"
SHORT = Message("", "Your repayment is due.")


def _sipp() -> str:
    path = shutil.which("sipp")
    if path is None:
        pytest.fail("sipp is missing: install the Debian package sip-tester (make deps)")
    return path


def udp_port(even: bool = False) -> int:
    """A UDP port free on 127.0.0.1 (even, with the next two free, for SIPp's media)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not even:
            return port
        port &= ~1
        try:
            socks = []
            for p in (port, port + 2):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port")


def sipp_errors(workdir: Path) -> str:
    """The end of SIPp's error log (-trace_err)."""
    text = "".join(p.read_text(errors="replace") for p in workdir.glob("*_errors.log"))
    return text[-1500:]


@asynccontextmanager
async def sipp(
    scenario: str, workdir: Path, pause_ms: int = 1000, calls: int = 1
) -> AsyncIterator[int]:
    """Run `calls` calls of a UAS scenario; yield its SIP port; then require a clean exit."""
    port, media = udp_port(), udp_port(even=True)
    proc = await asyncio.create_subprocess_exec(
        _sipp(), "-sf", str(SCENARIOS / f"{scenario}.xml"), "-i", "127.0.0.1",
        "-p", str(port), "-mp", str(media), "-rtp_echo", "-m", str(calls), "-d", str(pause_ms),
        "-nostdin", "-trace_err", "-timeout", "40s",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, cwd=workdir,
    )  # fmt: skip
    try:
        yield port
        try:
            code = await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            code = None
        assert code == 0, f"sipp {scenario} exited {code}: {sipp_errors(workdir)}"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def sip_settings(port: int, **overrides: Any) -> SipSettings:
    values: dict[str, Any] = {
        "proxy_host": "127.0.0.1",
        "proxy_port": port,
        "local_host": "127.0.0.1",
        "local_port": 0,
        "rtp_port_min": 30000,
        "rtp_port_max": 39999,
        "t1_s": 0.1,
        "ring_timeout_s": 1.0,
        "dtmf_wait_s": 0.5,
        "amd_initial_silence_s": 0.3,
        "amd_silence_s": 0.3,
        "amd_machine_speech_s": 1.0,
    }
    return SipSettings(**{**values, **overrides})


class Sinks:
    """The service's receipt and inbound callbacks, collecting what the provider reports."""

    def __init__(self) -> None:
        self.receipts: asyncio.Queue[Receipt] = asyncio.Queue()
        self.inbound: list[Inbound] = []

    async def on_receipt(self, receipt: Receipt) -> bool:
        await self.receipts.put(receipt)
        return True

    async def on_inbound(self, inbound: Inbound) -> str:
        self.inbound.append(inbound)
        return "inquiry-1"


@pytest.fixture
def tts() -> Tts:
    return Tts(sip_settings(5060))


@asynccontextmanager
async def provider(
    settings: SipSettings, channel: ChannelSettings, redis: Redis, tts: Tts
) -> AsyncIterator[tuple[SipProvider, Sinks]]:
    sinks = Sinks()
    prov = SipProvider(settings, tts)
    await prov.start(ProviderContext(channel, redis, sinks.on_receipt, sinks.on_inbound))
    try:
        yield prov, sinks
    finally:
        await prov.close()


async def call(
    prov: SipProvider, sinks: Sinks, number: str = NUMBER, locale: str = "en-US"
) -> tuple[Receipt, CallResult]:
    """Place one call and wait for its receipt."""
    result = await prov.send(dispatch("voice", number, locale=locale), SHORT)
    assert isinstance(result, Accepted)
    receipt = await asyncio.wait_for(sinks.receipts.get(), 20)
    assert receipt.provider_message_id == result.provider_message_id
    return receipt, prov.results[result.provider_message_id]


@pytest.fixture
def channel(make_settings: Callable[..., ChannelSettings]) -> ChannelSettings:
    return make_settings("voice", provider="sip")


# ---- against SIPp ------------------------------------------------------------------------


@pytest.mark.parametrize("digit", ["1", "2"])
async def test_answered_call_plays_the_message_and_reads_dtmf(
    digit: str, tmp_path: Path, channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    write_pcap(tmp_path / "dtmf.pcap", dtmf_packets(digit))
    async with sipp("answer_dtmf", tmp_path, pause_ms=1000) as port:
        async with provider(sip_settings(port), channel, redis, tts) as (prov, sinks):
            receipt, result = await call(prov, sinks)
    assert receipt.outcome == "delivered"
    assert result.digit == digit
    assert result.stats is not None
    # The callee got our audio: SIPp echoed frames of the spoken message back.
    assert result.stats.echoed_message_frames >= 10
    if digit == "1":
        assert receipt.detail == "answered; DTMF 1: confirmed"
        assert sinks.inbound == []
    else:
        assert receipt.detail == "answered; DTMF 2: call back requested"
        [inbound] = sinks.inbound
        assert inbound.from_ == NUMBER and inbound.text == CALLBACK_TEXT
        assert inbound.provider_message_id == f"{receipt.provider_message_id}:dtmf2"


async def test_concurrent_answered_calls_keep_their_own_dialog_and_media(
    tmp_path: Path, channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    write_pcap(tmp_path / "dtmf.pcap", dtmf_packets("1"))
    async with sipp("answer_dtmf", tmp_path, pause_ms=1000, calls=3) as port:
        async with provider(sip_settings(port), channel, redis, tts) as (prov, sinks):
            ids = []
            for _ in range(3):
                accepted = await prov.send(dispatch("voice", NUMBER), SHORT)
                assert isinstance(accepted, Accepted)
                ids.append(accepted.provider_message_id)
            receipts = [await asyncio.wait_for(sinks.receipts.get(), 20) for _ in ids]
    assert sorted(r.provider_message_id for r in receipts) == sorted(ids)
    assert {r.detail for r in receipts} == {"answered; DTMF 1: confirmed"}
    for call_id in ids:
        stats = prov.results[call_id].stats
        assert stats is not None and stats.digits == ["1"] and stats.echoed_message_frames >= 10


async def test_voice_service_over_sip_end_to_end(tmp_path: Path, channel: ChannelSettings) -> None:
    """The voice service with TONGDA_PROVIDER=sip on the real broker: a dispatch becomes a
    call; the callee presses 2; the outcome and the call-back inquiry reach their topics."""
    await create_topics(channel)
    write_pcap(tmp_path / "dtmf.pcap", dtmf_packets("2"))
    data = {"loan_id": "L-1", "amount_due": "1200.00", "currency": "CNY", "due_date": "2026-12-01"}
    d = dispatch("voice", NUMBER, locale="zh-CN", data=data)
    async with sipp("answer_dtmf", tmp_path, pause_ms=1000) as port:
        prov = SipProvider(sip_settings(port))
        async with serving(create_app(channel, prov), channel.http_port):
            await produce(channel, channel.topics.dispatch("voice"), [(b"c", dumps(d))])
            inquiries = await collect(channel, channel.topics.inquiries, 1)
            records = await collect(channel, channel.topics.router_inbox, 1)
    [outcome] = [decode(r.value, AttemptOutcome) for r in records]
    assert (outcome.notification_id, outcome.outcome) == (d.notification_id, "delivered")
    assert outcome.provider == "sip"
    inquiry = orjson.loads(inquiries[0].value)
    assert inquiry["schema"] == "inquiry.received/v1"
    assert (inquiry["channel"], inquiry["text"]) == ("voice", CALLBACK_TEXT)


async def test_callee_hangs_up_with_pcma(
    tmp_path: Path, channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    async with sipp("answer_hangup", tmp_path, pause_ms=800) as port:
        settings = sip_settings(port, amd_enabled=False)  # the message starts at answer
        async with provider(settings, channel, redis, tts) as (prov, sinks):
            receipt, result = await call(prov, sinks, locale="zh-CN")
    assert receipt.outcome == "delivered"
    assert receipt.detail == "answered; the callee hung up during the message"
    assert result.stats is not None
    # The answer chose PCMA: the echoed frames are A-law frames of the message.
    assert result.stats.echoed_message_frames >= 10
    assert 30 <= result.stats.sent < 70  # ~0.8 s of 20 ms frames before the BYE


@pytest.mark.parametrize(
    ("scenario", "outcome", "detail"),
    [
        ("busy", "busy", "SIP 486 Busy Here"),
        ("not_found", "rejected", "SIP 404 Not Found"),
        ("ring", "no_answer", "SIP 487 Request Terminated after CANCEL at the ring timeout (1 s)"),
    ],
)
async def test_unanswered_calls(
    scenario: str,
    outcome: str,
    detail: str,
    tmp_path: Path,
    channel: ChannelSettings,
    redis: Redis,
    tts: Tts,
) -> None:
    async with sipp(scenario, tmp_path) as port:
        async with provider(sip_settings(port), channel, redis, tts) as (prov, sinks):
            loop = asyncio.get_running_loop()
            started = loop.time()
            receipt, result = await call(prov, sinks)
            elapsed = loop.time() - started
    assert (receipt.outcome, receipt.detail) == (outcome, detail)
    assert result.stats is None  # never answered: no media
    if scenario == "ring":
        assert 1.0 <= elapsed < 3.0  # the ring timeout, then CANCEL and 487


async def test_digest_authentication(
    tmp_path: Path,
    channel: ChannelSettings,
    redis: Redis,
    tts: Tts,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with sipp("auth", tmp_path) as port:
        settings = sip_settings(port, username="tongda", password="s3cret-sip")
        async with provider(settings, channel, redis, tts) as (prov, sinks):
            receipt, result = await call(prov, sinks)
    assert (receipt.outcome, receipt.detail) == ("delivered", "answered; message played")
    assert result.stats is not None and result.stats.echoed_message_frames >= 10
    assert "call ended" in caplog.text
    assert "s3cret-sip" not in caplog.text and NUMBER not in caplog.text


async def test_concurrent_calls_are_limited(
    tmp_path: Path, channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    """With max_calls=1, the second call rings only after the first gave up (1 s each)."""
    async with sipp("ring", tmp_path, calls=2) as port:
        async with provider(sip_settings(port, max_calls=1), channel, redis, tts) as (prov, sinks):
            loop = asyncio.get_running_loop()
            started = loop.time()
            for _ in range(2):
                assert isinstance(await prov.send(dispatch("voice", NUMBER), SHORT), Accepted)
            ended = []
            for _ in range(2):
                receipt = await asyncio.wait_for(sinks.receipts.get(), 10)
                assert receipt.outcome == "no_answer"
                ended.append(loop.time() - started)
    assert 1.0 <= ended[0] < 1.8 and ended[1] >= 2.0


async def test_wrong_password_fails(
    tmp_path: Path, channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    async with sipp("auth", tmp_path) as port:
        settings = sip_settings(port, username="tongda", password="wrong")
        async with provider(settings, channel, redis, tts) as (prov, sinks):
            receipt, _ = await call(prov, sinks)
    assert (receipt.outcome, receipt.detail) == ("failed", "SIP 403 Forbidden")


async def test_answering_machine_gets_the_message_as_voicemail(
    tmp_path: Path, channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    write_pcap(tmp_path / "greeting.pcap", tone_packets(1.6))
    async with sipp("voicemail", tmp_path) as port:
        async with provider(sip_settings(port), channel, redis, tts) as (prov, sinks):
            receipt, result = await call(prov, sinks)
    assert receipt.outcome == "voicemail"
    assert result.stats is not None and result.stats.echoed_message_frames >= 10


async def test_no_response_is_failed_after_timer_b(
    channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    settings = sip_settings(udp_port(), t1_s=0.02)  # nothing listens there; 64*T1 = 1.28 s
    async with provider(settings, channel, redis, tts) as (prov, sinks):
        receipt, _ = await call(prov, sinks)
    assert (receipt.outcome, receipt.detail) == ("failed", "no response to INVITE (timer B)")


class Peer(asyncio.DatagramProtocol):
    """A bare UDP peer that records the SIP requests it receives."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[float, SipMessage, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = asyncio.get_running_loop().time()
        self.requests.put_nowait((now, parse(data), addr))


async def test_invite_is_retransmitted_until_answered_and_the_final_response_acked(
    channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    loop = asyncio.get_running_loop()
    transport, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        async with provider(sip_settings(port, t1_s=0.1), channel, redis, tts) as (prov, sinks):
            await prov.send(dispatch("voice", NUMBER), SHORT)
            first_at, first, _ = await asyncio.wait_for(peer.requests.get(), 5)
            again_at, again, addr = await asyncio.wait_for(peer.requests.get(), 5)
            # Timer A: the same INVITE (same branch and CSeq) again after T1.
            assert (first.method, again.method) == ("INVITE", "INVITE")
            assert again.branch == first.branch and again.cseq == first.cseq
            assert 0.08 <= again_at - first_at < 0.5
            transport.sendto(response_to(again, 486, "Busy Here", to_tag="b1").encode(), addr)
            _, ack, _ = await asyncio.wait_for(peer.requests.get(), 5)
            receipt = await asyncio.wait_for(sinks.receipts.get(), 5)
    finally:
        transport.close()
    # The ACK of a non-2xx response: same transaction (branch), the response's To tag.
    assert (ack.method, ack.branch, ack.cseq) == ("ACK", first.branch, (first.cseq[0], "ACK"))
    assert "tag=b1" in (ack.get("To") or "")
    assert receipt.outcome == "busy"


async def test_tts_failure_fails_the_send(channel: ChannelSettings, redis: Redis) -> None:
    settings = sip_settings(udp_port(), espeak_path="/nonexistent/espeak-ng")
    async with provider(settings, channel, redis, Tts(settings)) as (prov, _):
        with pytest.raises(TtsError, match="espeak-ng"):
            await prov.send(dispatch("voice", NUMBER), SHORT)


async def test_invalid_number_is_rejected_at_once(
    channel: ChannelSettings, redis: Redis, tts: Tts
) -> None:
    async with provider(sip_settings(udp_port()), channel, redis, tts) as (prov, _):
        result = await prov.send(dispatch("voice", "not-a-number"), SHORT)
    assert result == Completed("rejected", None, "not a phone number (E.164)")


# ---- the parts -----------------------------------------------------------------------------


def test_outcome_mapping() -> None:
    assert [outcome_for_status(s) for s in (486, 600, 408, 480, 404, 484, 604, 500, 503)] == [
        "busy", "busy", "no_answer", "no_answer", "rejected", "rejected", "rejected",
        "failed", "failed",
    ]  # fmt: skip
    assert outcome_for_status(487, cancelled=True) == "no_answer"
    assert outcome_for_status(487) == "failed"


def _sox(args: list[str], data: bytes) -> bytes:
    return subprocess.run(["sox", *args], input=data, capture_output=True, check=True).stdout


@pytest.mark.parametrize(("law", "sox_type"), [("PCMU", "ul"), ("PCMA", "al")])
def test_g711_agrees_with_sox(law: g711.Law, sox_type: str) -> None:
    raw = ["-t", "raw", "-r", "8000", "-c", "1", "-e", "signed-integer", "-b", "16", "-L"]
    # Decoding: every code the same as sox.
    decoded = _sox(["-t", sox_type, "-r", "8000", "-c", "1", "-", *raw, "-"], bytes(range(256)))
    assert g711.decode(bytes(range(256)), law).tolist() == array.array("h", decoded).tolist()
    # Encoding every 16-bit sample (ITU-T reference rounding): sox's code, or the level next
    # to it (they round differently at a few decision boundaries).
    samples = array.array("h", range(-32768, 32768))
    ours = g711.encode(samples.tobytes(), law)
    theirs = _sox(["-D", *raw, "-", "-t", sox_type, "-"], samples.tobytes())
    table = g711.decode(bytes(range(256)), law)
    rank = {level: i for i, level in enumerate(sorted(set(table)))}
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    assert same > 0.98 * len(samples)
    assert all(abs(rank[table[a]] - rank[table[b]]) <= 1 for a, b in zip(ours, theirs, strict=True))
    assert g711.silence("PCMU") == 0xFF and g711.silence("PCMA") == 0xD5


def test_digest_rfc2617_example() -> None:
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    assert challenge is not None
    value = authorization(
        challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b"
    )
    assert 'response="6629fae49393a05397450978507c4ef1"' in value
    assert "nc=00000001" in value and 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in value
    assert parse_challenge('Basic realm="x"') is None


def test_sdp_answer_and_offer() -> None:
    answer = sdp.parse_answer(
        b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
        b"m=audio 4000 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n"
    )
    assert answer == sdp.MediaAnswer("10.0.0.2", 4000, "PCMA", 8, 96)
    with pytest.raises(sdp.SdpError):
        sdp.parse_answer(b"v=0\r\nc=IN IP4 10.0.0.2\r\nm=audio 4000 RTP/AVP 18\r\n")
    offer = sdp.offer("192.0.2.1", 10002, "PCMA", 101).decode()
    assert "m=audio 10002 RTP/AVP 8 0 101\r\n" in offer and "a=fmtp:101 0-16" in offer


def test_sip_message_parsing() -> None:
    msg = parse(
        b"SIP/2.0 180 Ringing\r\nv: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport=5060, "
        b"SIP/2.0/UDP 10.0.0.9\r\nf: <sip:a@b>;tag=1\r\nt: <sip:c@d>;tag=2\r\ni: x@y\r\n"
        b"CSeq: 3 INVITE\r\nRecord-Route: <sip:p1;lr>, <sip:p2;lr>\r\nl: 0\r\n\r\n"
    )
    assert (msg.status, msg.branch, msg.cseq) == (180, "z9hG4bKabc", (3, "INVITE"))
    assert msg.get_all("Record-Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]
    assert len(msg.get_all("Via")) == 2


async def test_tts_voices_and_cache(tts: Tts) -> None:
    assert tts.voice("zh-CN") == "cmn" and tts.voice("en-US") == "en-us"
    assert tts.voice("fr-FR") == "en-us"
    english = await tts.render("Your repayment is due.", "en-US")
    chinese = await tts.render("您的还款已到期。", "zh-CN")
    for pcm in (english, chinese):
        seconds = len(pcm) / 16000
        assert 0.5 < seconds < 6
        samples = array.array("h", pcm)
        assert max(abs(s) for s in samples) > 3000  # speech, not silence
    assert english != chinese
    assert tts.renders == 2
    assert await tts.render("Your repayment is due.", "en-GB") is english  # cached
    assert tts.renders == 2


def test_build_provider_reads_sip_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    channel = ChannelSettings(channel="voice", provider="sip")
    monkeypatch.delenv("TONGDA_SIP_PROXY_HOST", raising=False)
    with pytest.raises(ConfigError, match="TONGDA_SIP_PROXY_HOST"):
        build_provider(channel)
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    monkeypatch.setenv("TONGDA_SIP_PROXY_HOST", "sip.example")
    monkeypatch.setenv("TONGDA_SIP_USERNAME", "tongda")
    monkeypatch.setenv("TONGDA_SIP_PASSWORD_FILE", str(secret))
    prov = build_provider(channel)
    assert isinstance(prov, SipProvider)
    assert prov.settings.password is not None
    assert prov.settings.password.get_secret_value() == "from-file"
    assert "from-file" not in repr(prov.settings)
    monkeypatch.setenv("TONGDA_SIP_PASSWORD", "too")
    with pytest.raises(ConfigError, match="not both"):
        build_provider(channel)
