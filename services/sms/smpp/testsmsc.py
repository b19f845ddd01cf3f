"""A test SMSC: an asyncio SMPP 3.4 server for the tests, the bench and a laptop stack.

It binds transceivers (checking system_id and password), answers submit_sm, sends delivery
receipts chosen by the destination's last four digits, and can be told to throttle, drop
every connection, or send a borrower's message (MO deliver_sm). Every submit is recorded.

| destination ends | submit_sm_resp | receipt |
|---|---|---|
| 0003 | ESME_RINVDSTADR | none |
| 0005 | ok | stat:UNDELIV err:001 |
| 0006 | ok | stat:REJECTD err:002 |
| 0007 | ok | none (never reported) |
| other | ok | stat:DELIVRD err:000 |

With `steering="contract"` (the local demo's peer, tools/peers) it answers like the SMS
sandbox of docs/CONTRACT.md instead: 0003 ESME_RINVDSTADR, 0004 `stat:UNDELIV` (failed),
anything else `stat:DELIVRD` — except 0008, refused with ESME_RSUBMITFAIL (a `failed` send,
so the demo's SMS failover chain `smpp,twilio` sends it through Twilio).

`python -m services.sms.smpp.testsmsc --port 2775 --system-id tongda --password secret`
runs one in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from services.sms.smpp import pdu
from services.sms.smpp.pdu import Pdu, ShortMessage
from services.sms.smpp.text import encode_text, split_udh

log = logging.getLogger(__name__)

Steering = Literal["tests", "contract"]
# Receipts (stat, err) by the destination's last four digits; None: no receipt at all.
RECEIPTS: dict[Steering, dict[str, tuple[str, str] | None]] = {
    "tests": {"0005": ("UNDELIV", "001"), "0006": ("REJECTD", "002"), "0007": None},
    "contract": {"0004": ("UNDELIV", "001")},
}
# submit_sm refusals (besides 0003's ESME_RINVDSTADR) by the destination's last four digits
REFUSALS: dict[Steering, dict[str, int]] = {
    "tests": {},
    "contract": {"0008": pdu.ESME_RSUBMITFAIL},
}


@dataclass(frozen=True)
class Submitted:
    """One submit_sm the SMSC accepted (or refused)."""

    message: ShortMessage
    message_id: str
    status: int
    at: float = field(default_factory=time.monotonic)

    @property
    def text_octets(self) -> bytes:
        """The payload without its UDH."""
        if self.message.esm_class & pdu.ESM_UDHI:
            return split_udh(self.message.short_message)[1]
        return self.message.short_message


class _Peer:
    """One connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.bound = False
        self.sequence = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[Pdu]] = {}

    def send(self, p: Pdu) -> None:
        if not self.writer.is_closing():
            self.writer.write(p.encode())


class TestSmsc:
    """The server. `async with TestSmsc(...) as smsc:` listens on 127.0.0.1:`smsc.port`."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        system_id: str = "tongda",
        password: str = "secret",
        port: int = 0,
        receipt_delay_s: float = 0.0,
        receipt_tlvs: bool = False,
        steering: Steering = "tests",
    ) -> None:
        self.system_id = system_id
        self.password = password
        self.port = port
        self.receipt_delay_s = receipt_delay_s
        self.receipt_tlvs = receipt_tlvs
        self.receipt_table = RECEIPTS[steering]
        self.refusals = REFUSALS[steering]
        self.submits: list[Submitted] = []
        self.binds = 0
        self.bind_failures = 0
        self.enquire_links = 0
        self.mo_acks: list[int] = []  # deliver_sm_resp statuses for MO messages
        self.receipt_acks: list[int] = []  # ... and for receipts
        self.throttle = 0  # answer the next N submits with ESME_RTHROTTLED
        self.throttled = 0
        self.receipts_elsewhere = False  # send receipts on another bound session, if any
        self.stall = False  # take submits and never answer them
        self.stalled: list[ShortMessage] = []
        self._ids = itertools.count(0x1000)
        self._peers: set[_Peer] = set()
        self._server: asyncio.Server | None = None
        self._waiters: set[asyncio.Event] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TestSmsc:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def bound_peers(self) -> int:
        return sum(1 for p in self._peers if p.bound)

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 10.0) -> None:
        """Wait until `predicate()` holds (checked on every change); TimeoutError otherwise."""

        async def until() -> None:
            while not predicate():
                changed = asyncio.Event()
                self._waiters.add(changed)
                try:
                    await changed.wait()
                finally:
                    self._waiters.discard(changed)

        await asyncio.wait_for(until(), within_s)

    def _notify(self) -> None:
        for changed in self._waiters:
            changed.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def drop(self) -> None:
        """Close every connection at once, without unbind (a network failure)."""
        for peer in list(self._peers):
            peer.writer.transport.abort()
        self._notify()

    async def send_mo(self, source: str, text: str, ref: int = 7) -> list[int]:
        """A borrower's message to a bound session (parts if long); the deliver_sm_resp
        statuses."""
        peer = next((p for p in self._peers if p.bound), None)
        if peer is None:
            raise RuntimeError("no bound session")
        encoded = encode_text(text, ref)
        statuses = []
        for part in encoded.parts:
            sm = ShortMessage(
                source_addr=source.lstrip("+"),
                source_addr_ton=1,
                source_addr_npi=1,
                destination_addr="10690000",
                esm_class=encoded.esm_class,
                data_coding=encoded.data_coding,
                short_message=part,
            )
            resp = await self._request(peer, pdu.DELIVER_SM, sm.encode())
            statuses.append(resp.status)
        self.mo_acks.extend(statuses)
        self._notify()
        return statuses

    async def _request(self, peer: _Peer, command_id: int, body: bytes) -> Pdu:
        seq = next(peer.sequence)
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        peer.waiting[seq] = future
        peer.send(Pdu(command_id, 0, seq, body))
        try:
            return await asyncio.wait_for(future, 10.0)
        finally:
            peer.waiting.pop(seq, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _Peer(reader, writer)
        self._peers.add(peer)
        try:
            while True:
                p = await pdu.read_pdu(reader)
                if p.is_response:
                    future = peer.waiting.get(p.sequence)
                    if future is not None and not future.done():
                        future.set_result(p)
                    continue
                self._handle(peer, p)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, pdu.PduError):
            pass
        finally:
            self._peers.discard(peer)
            peer.writer.close()
            for future in peer.waiting.values():
                if not future.done():
                    future.set_exception(ConnectionResetError("peer gone"))
            self._notify()

    def _handle(self, peer: _Peer, p: Pdu) -> None:
        if p.command_id == pdu.BIND_TRANSCEIVER:
            bind = pdu.Bind.decode(p.body)
            ok = bind.system_id == self.system_id and bind.password == self.password
            status = pdu.ESME_ROK if ok else pdu.ESME_RINVPASWD
            peer.bound = ok
            if ok:
                self.binds += 1
            else:
                self.bind_failures += 1
            peer.send(Pdu(pdu.BIND_TRANSCEIVER_RESP, status, p.sequence, pdu.encode_id("TESTSMSC")))
        elif not peer.bound:
            peer.send(Pdu(pdu.GENERIC_NACK, pdu.ESME_RINVBNDSTS, p.sequence))
        elif p.command_id == pdu.ENQUIRE_LINK:
            self.enquire_links += 1
            peer.send(Pdu(pdu.ENQUIRE_LINK_RESP, 0, p.sequence))
        elif p.command_id == pdu.SUBMIT_SM:
            self._submit(peer, p)
        elif p.command_id == pdu.UNBIND:
            peer.send(Pdu(pdu.UNBIND_RESP, 0, p.sequence))
            peer.bound = False
        else:
            peer.send(Pdu(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, p.sequence))
        self._notify()

    def _submit(self, peer: _Peer, p: Pdu) -> None:
        sm = ShortMessage.decode(p.body)
        if self.stall:
            self.stalled.append(sm)
            return
        if self.throttle > 0:
            self.throttle -= 1
            self.throttled += 1
            peer.send(Pdu(pdu.SUBMIT_SM_RESP, pdu.ESME_RTHROTTLED, p.sequence))
            return
        dest = sm.destination_addr
        refusal = pdu.ESME_RINVDSTADR if dest.endswith("0003") else self.refusals.get(dest[-4:])
        if refusal is not None:
            self.submits.append(Submitted(sm, "", refusal))
            peer.send(Pdu(pdu.SUBMIT_SM_RESP, refusal, p.sequence))
            return
        message_id = f"{next(self._ids):x}"
        self.submits.append(Submitted(sm, message_id, pdu.ESME_ROK))
        peer.send(Pdu(pdu.SUBMIT_SM_RESP, 0, p.sequence, pdu.encode_id(message_id)))
        receipt = self.receipt_table.get(dest[-4:], ("DELIVRD", "000"))
        if sm.registered_delivery & 0x03 and receipt is not None:
            self._spawn(self._receipt(peer, sm, message_id, *receipt))

    async def _receipt(
        self, peer: _Peer, sm: ShortMessage, message_id: str, stat: str, err: str
    ) -> None:
        if self.receipt_delay_s:
            await asyncio.sleep(self.receipt_delay_s)
        if self.receipts_elsewhere:
            peer = next((p for p in self._peers if p.bound and p is not peer), peer)
        now = time.strftime("%y%m%d%H%M")
        text = (
            f"id:{message_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} "
            f"submit date:{now} done date:{now} stat:{stat} err:{err} text:"
        )
        tlvs: dict[int, bytes] = {}
        if self.receipt_tlvs:
            state = {"DELIVRD": 2, "UNDELIV": 5, "REJECTD": 8}[stat]
            tlvs = {
                pdu.TLV_RECEIPTED_MESSAGE_ID: message_id.encode() + b"\x00",
                pdu.TLV_MESSAGE_STATE: bytes((state,)),
            }
        receipt = ShortMessage(
            source_addr=sm.destination_addr,
            source_addr_ton=sm.dest_addr_ton,
            source_addr_npi=sm.dest_addr_npi,
            destination_addr=sm.source_addr,
            esm_class=pdu.ESM_DELIVERY_RECEIPT,
            short_message=text.encode("ascii"),
            tlvs=tlvs,
        )
        with contextlib.suppress(ConnectionError, TimeoutError):
            resp = await self._request(peer, pdu.DELIVER_SM, receipt.encode())
            self.receipt_acks.append(resp.status)
            self._notify()


def main() -> None:
    """Serve until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=2775)
    parser.add_argument("--system-id", default="tongda")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--receipt-delay", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

    async def serve() -> None:
        async with TestSmsc(args.system_id, args.password, args.port, args.receipt_delay) as s:
            log.info("test SMSC on 127.0.0.1:%d", s.port)
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
