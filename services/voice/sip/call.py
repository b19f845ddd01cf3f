"""One outbound call, as a UAC (RFC 3261): INVITE with an SDP offer (retransmitted by Timer A,
given up by Timer B), digest authentication on 401/407, CANCEL at the ring timeout, ACK for
every final response, then the message over RTP, DTMF, and BYE.

The outcome comes from the signalling (see `outcome_for_status`) or, once answered, from
the media: DTMF digits, the callee hanging up, or the answering-machine heuristic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

from services.voice.sip import sdp
from services.voice.sip.amd import MachineDetector
from services.voice.sip.digest import authorization, parse_challenge
from services.voice.sip.message import SipMessage, param, uri_of
from services.voice.sip.rtp import RtpSession, RtpStats
from services.voice.sip.settings import SipSettings
from services.voice.sip.transport import SipEndpoint, new_branch, new_tag, response_to
from shared.channel.provider import ProviderOutcome

log = logging.getLogger(__name__)

T2_S = 4.0  # RFC 3261 T2: the cap of non-INVITE retransmission intervals


@dataclass(frozen=True)
class CallResult:
    """How a call ended."""

    outcome: ProviderOutcome
    detail: str
    digit: str | None = None  # the DTMF digit the callee pressed after answering
    stats: RtpStats | None = None


def outcome_for_status(status: int, cancelled: bool = False) -> ProviderOutcome:
    """A final non-2xx response to INVITE → the attempt's outcome."""
    if status in (486, 600, 603):
        return "busy"
    if status in (408, 480) or (status == 487 and cancelled):
        return "no_answer"
    if status in (404, 484, 604):
        return "rejected"
    return "failed"


class SipCall:
    """Call `number` through the endpoint's proxy and play `pcm` (8 kHz 16-bit mono)."""

    def __init__(
        self, endpoint: SipEndpoint, settings: SipSettings, number: str, pcm: bytes
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.pcm = pcm
        host = endpoint.advertised_host
        user = number[1:] if settings.strip_plus and number.startswith("+") else number
        self.call_id = f"{uuid.uuid4().hex}@{host}"
        self.request_uri = f"sip:{user}@{settings.request_domain}"
        self.local_tag = new_tag()
        name = f'"{settings.display_name}" ' if settings.display_name else ""
        self.from_header = f"{name}<{settings.from_uri}>;tag={self.local_tag}"
        self.to_header = f"<{self.request_uri}>"
        self.contact = f"<sip:tongda@{host}:{endpoint.port}>"
        self.cseq = 0
        # The dialog, once answered.
        self.remote_target = self.request_uri
        self.route_set: list[str] = []
        self.state = "calling"  # → early → answered → confirmed → terminated
        self.hangup = asyncio.Event()  # the callee sent BYE
        self.stop = asyncio.Event()  # stop sending: hangup or a digit
        self._invite: SipMessage | None = None
        self._remote_to = self.to_header
        self._branches: list[str] = []  # of our INVITEs (late final responses get an ACK)
        self._acks: dict[bool, SipMessage] = {}  # 2xx? → the ACK to resend
        self.info_digits: list[str] = []
        self.rtp: RtpSession | None = None

    # ---- messages -------------------------------------------------------------------

    def _request(
        self, method: str, branch: str, cseq: int, uri: str | None = None, to: str | None = None
    ) -> SipMessage:
        ep = self.endpoint
        msg = SipMessage(method=method, uri=uri or self.request_uri)
        msg.add("Via", f"SIP/2.0/UDP {ep.advertised_host}:{ep.port};rport;branch={branch}")
        msg.add("Max-Forwards", "70")
        msg.add("From", self.from_header)
        msg.add("To", to or self.to_header)
        msg.add("Call-ID", self.call_id)
        msg.add("CSeq", f"{cseq} {method}")
        return msg

    def _in_dialog(self, method: str, branch: str, cseq: int, to: str) -> SipMessage:
        msg = self._request(method, branch, cseq, uri=self.remote_target, to=to)
        for route in self.route_set:
            msg.add("Route", route)
        return msg

    # ---- the call -------------------------------------------------------------------

    async def run(self) -> CallResult:
        s = self.settings
        self.rtp = await RtpSession.open(self.endpoint.local[0], s.rtp_port_min, s.rtp_port_max)
        self.endpoint.add_dialog(self.call_id, self._on_request)
        try:
            answered = await self._invite_until_final()
            if isinstance(answered, CallResult):
                return answered
            try:
                return await asyncio.wait_for(self._media(answered), s.max_call_s)
            except TimeoutError:
                return CallResult(
                    "delivered", "answered; hung up at max_call_s", None, self.rtp.stats
                )
            finally:
                if not self.hangup.is_set():
                    await self._bye(answered)
        finally:
            self.stop.set()
            self._abandon()
            self.endpoint.remove_dialog(self.call_id)
            for branch in self._branches:
                self.endpoint.remove_transaction(branch, "INVITE")
            self.rtp.close()

    def _abandon(self) -> None:
        """Stopped while ringing (shutdown): a best-effort CANCEL, not waited for."""
        if self.state == "early" and self._invite is not None:
            self.endpoint.send(self._cancel_for(self._invite))
        self.state = "terminated"

    async def _invite_until_final(self) -> CallResult | sdp.MediaAnswer:
        """INVITE (again with credentials when challenged) until a final response."""
        s = self.settings
        assert self.rtp is not None
        loop = asyncio.get_running_loop()
        ring_deadline = loop.time() + s.ring_timeout_s
        offer = sdp.offer(
            self.endpoint.advertised_host, self.rtp.port, s.codec, s.dtmf_payload_type
        )
        credentials: list[tuple[str, str]] = []
        answered_challenges: set[int] = set()
        while True:
            self.cseq += 1
            branch = new_branch()
            invite = self._request("INVITE", branch, self.cseq)
            invite.add("Contact", self.contact)
            for name, value in credentials:
                invite.add(name, value)
            invite.add("Allow", "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO")
            invite.add("User-Agent", "tongda")
            invite.add("Content-Type", "application/sdp")
            invite.body = offer
            self._invite = invite
            self._branches.append(branch)
            final, cancelled = await self._invite_transaction(invite, branch, ring_deadline)
            if final is None:
                return CallResult("failed", "no response to INVITE (timer B)")
            status = final.status or 0
            if status in (401, 407) and s.username and s.password:
                header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
                challenge = parse_challenge(final.get(header) or "")
                stale = challenge is not None and challenge.get("stale", "").lower() == "true"
                if challenge is not None and (status not in answered_challenges or stale):
                    answered_challenges.add(status)
                    value = authorization(
                        challenge,
                        "INVITE",
                        self.request_uri,
                        s.username,
                        s.password.get_secret_value(),
                    )
                    name = "Authorization" if status == 401 else "Proxy-Authorization"
                    credentials = [c for c in credentials if c[0] != name] + [(name, value)]
                    continue
            if status >= 300:
                detail = f"SIP {status} {final.reason}".strip()
                if status in (401, 407):
                    detail += " (authentication failed)" if s.username else " (no credentials)"
                if cancelled:
                    detail += f" after CANCEL at the ring timeout ({s.ring_timeout_s:g} s)"
                return CallResult(outcome_for_status(status, cancelled), detail)
            self._confirm(final)
            try:
                answer = sdp.parse_answer(final.body)
            except sdp.SdpError as exc:
                await self._bye(None)
                return CallResult("failed", f"answered with an unusable SDP: {exc}")
            if cancelled:  # answered just as we cancelled: hang up
                await self._bye(answer)
                return CallResult("no_answer", "answered after the ring timeout; hung up")
            return answer

    async def _invite_transaction(
        self, invite: SipMessage, branch: str, ring_deadline: float
    ) -> tuple[SipMessage | None, bool]:
        """Send INVITE until a final response (retransmitting by Timer A until a provisional
        one); CANCEL at the ring timeout. Returns (final response or None, cancelled)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        responses: asyncio.Queue[SipMessage] = asyncio.Queue()
        self.endpoint.add_transaction(branch, "INVITE", responses.put_nowait)
        self.endpoint.add_transaction(branch, "CANCEL", lambda _m: None)
        self.endpoint.send(invite)
        now = loop.time()
        interval, next_send, timer_b = s.t1_s, now + s.t1_s, now + 64 * s.t1_s
        provisional = cancelled = False
        cancel: SipMessage | None = None
        cancel_interval = s.t1_s
        try:
            while True:
                now = loop.time()
                deadlines = [timer_b]
                if not provisional:
                    deadlines.append(next_send)
                if not cancelled:
                    deadlines.append(ring_deadline)
                elif cancel is not None:
                    deadlines.append(next_send)
                try:
                    response = await asyncio.wait_for(
                        responses.get(), max(0.0, min(deadlines) - now)
                    )
                except TimeoutError:
                    now = loop.time()
                    if now >= timer_b:
                        return None, cancelled
                    if cancel is not None and now >= next_send:  # Timer E for the CANCEL
                        self.endpoint.send(cancel)
                        cancel_interval = min(cancel_interval * 2, T2_S)
                        next_send = now + cancel_interval
                    elif not provisional and now >= next_send:  # Timer A
                        self.endpoint.send(invite)
                        interval *= 2
                        next_send = now + interval
                    if not cancelled and now >= ring_deadline:
                        cancelled = True  # sent once a provisional response came (§9.1)
                        if provisional:
                            cancel = self._send_cancel(invite)
                            next_send, timer_b = now + s.t1_s, now + 64 * s.t1_s
                    continue
                status = response.status or 0
                if status < 200:
                    if not provisional:
                        provisional = True
                        self.state = "early"
                        if cancelled and cancel is None:
                            cancel = self._send_cancel(invite)
                            next_send, timer_b = loop.time() + s.t1_s, loop.time() + 64 * s.t1_s
                    if not cancelled:
                        timer_b = float("inf")  # ringing: the ring timeout governs
                    continue
                if status >= 300:
                    ack = self._request("ACK", branch, self.cseq, to=response.get("To"))
                    self._acks[False] = ack
                    self.endpoint.send(ack)
                self.state = "answered" if status < 300 else "terminated"
                return response, cancelled
        finally:
            # Later retransmissions of the final response get our ACK again.
            self.endpoint.add_transaction(branch, "INVITE", self._on_late_response)
            self.endpoint.remove_transaction(branch, "CANCEL")

    def _cancel_for(self, invite: SipMessage) -> SipMessage:
        """CANCEL matches the INVITE: its branch, Request-URI, To and CSeq number (§9.1)."""
        return self._request("CANCEL", invite.branch or new_branch(), self.cseq)

    def _send_cancel(self, invite: SipMessage) -> SipMessage:
        cancel = self._cancel_for(invite)
        self.endpoint.send(cancel)
        return cancel

    def _confirm(self, ok: SipMessage) -> None:
        """A 2xx: the dialog exists; ACK it (a new transaction, §13.2.2.4)."""
        to = ok.get("To") or self.to_header
        contact = ok.get("Contact")
        self.remote_target = uri_of(contact) if contact else self.request_uri
        self.route_set = list(reversed(ok.get_all("Record-Route")))
        self.state = "confirmed"
        ack = self._in_dialog("ACK", new_branch(), self.cseq, to)
        self._acks[True] = ack
        self._remote_to = to
        self.endpoint.send(ack)

    def _on_late_response(self, response: SipMessage) -> None:
        ack = self._acks.get(200 <= (response.status or 0) < 300)
        if ack is not None and (response.status or 0) >= 200:
            self.endpoint.send(ack)

    def _on_request(self, request: SipMessage) -> None:
        """In-dialog requests from the callee."""
        method = request.method
        if method == "ACK":
            return
        if method == "BYE":
            self.endpoint.send(response_to(request, 200, "OK"), self._reply_addr(request))
            self.hangup.set()
            self.stop.set()
            self.state = "terminated"
        elif method == "INFO":
            signal = _info_digit(request.body)
            if signal:
                self.info_digits.append(signal)
                self.stop.set()
            self.endpoint.send(response_to(request, 200, "OK"), self._reply_addr(request))
        elif method == "INVITE":  # re-INVITE: we keep the session as negotiated
            self.endpoint.send(
                response_to(request, 488, "Not Acceptable Here"), self._reply_addr(request)
            )
        else:
            self.endpoint.send(response_to(request, 200, "OK"), self._reply_addr(request))

    def _reply_addr(self, request: SipMessage) -> tuple[str, int]:
        """Responses go to the top Via's sent-by (received/rport when present)."""
        via = request.get("Via") or ""
        sent_by = via.split(" ", 1)[-1].split(";", 1)[0].strip()
        host, _, port = sent_by.partition(":")
        host = param(via, "received") or host
        rport = param(via, "rport")
        return host, int(rport or port or 5060)

    # ---- media ----------------------------------------------------------------------

    async def _media(self, answer: sdp.MediaAnswer) -> CallResult:
        s = self.settings
        rtp = self.rtp
        assert rtp is not None
        rtp.configure(
            answer.host, answer.port, answer.codec, answer.payload_type, answer.dtmf_payload_type
        )
        rtp.stop = self.stop
        voicemail = False
        if s.amd_enabled:
            detector = MachineDetector(s)
            rtp.on_energy = detector.feed
            listening = asyncio.Event()
            keepalive = asyncio.create_task(rtp.play_silence(s.amd_max_greeting_s * 2, listening))
            try:
                voicemail = await detector.decide() == "machine"
                if voicemail:
                    await detector.end_of_greeting()
            finally:
                listening.set()
                await keepalive
                rtp.on_energy = None
            if self.hangup.is_set():
                return CallResult(
                    "no_answer", "answered, then hung up before the message", None, rtp.stats
                )
        played = await rtp.play(self.pcm, self.stop)
        if voicemail:
            return CallResult(
                "voicemail", "answering machine (heuristic); message left", None, rtp.stats
            )
        if played and s.dtmf_wait_s > 0:
            await rtp.play_silence(s.dtmf_wait_s, self.stop)
        digit = next(iter(rtp.stats.digits + self.info_digits), None)
        if digit == "1":
            return CallResult("delivered", "answered; DTMF 1: confirmed", "1", rtp.stats)
        if digit == "2":
            return CallResult("delivered", "answered; DTMF 2: call back requested", "2", rtp.stats)
        if self.hangup.is_set() and not played:
            return CallResult(
                "delivered", "answered; the callee hung up during the message", None, rtp.stats
            )
        return CallResult("delivered", "answered; message played", digit, rtp.stats)

    async def _bye(self, answer: sdp.MediaAnswer | None) -> None:
        """BYE and wait for its final response (Timer E retransmissions, Timer F)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        self.cseq += 1
        branch = new_branch()
        bye = self._in_dialog("BYE", branch, self.cseq, self._remote_to)
        done = asyncio.Event()
        self.endpoint.add_transaction(
            branch, "BYE", lambda m: done.set() if (m.status or 0) >= 200 else None
        )
        self.state = "terminated"
        try:
            deadline, interval = loop.time() + 64 * s.t1_s, s.t1_s
            while not done.is_set():
                self.endpoint.send(bye)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    log.warning("no answer to BYE", extra={"call_id": self.call_id})
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), min(interval, remaining))
                interval = min(interval * 2, T2_S)
        finally:
            self.endpoint.remove_transaction(branch, "BYE")


def _info_digit(body: bytes) -> str | None:
    """SIP INFO `application/dtmf-relay` (`Signal=1`) → the digit."""
    for line in body.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "signal" and value.strip()[:1] in "0123456789*#":
            return value.strip()[:1] or None
    return None
