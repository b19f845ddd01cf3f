"""One SMPP transceiver session over asyncio streams: bind, a window of submit_sm in flight
keyed by sequence number, enquire_link, deliver_sm handed to a callback, unbind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from services.sms.smpp import pdu
from services.sms.smpp.pdu import Pdu, ShortMessage
from services.sms.smpp.settings import SmppSettings

log = logging.getLogger(__name__)

DeliverHandler = Callable[[ShortMessage], Awaitable[None]]
IdHandler = Callable[[str], None]


class SessionClosed(ConnectionError):
    """The session is gone (dropped, unbound, or never bound): a submit on it did not happen
    or its answer is lost."""


class BindRefused(ConnectionError):
    """The SMSC answered bind_transceiver with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: command_status 0x{status:02x}")
        self.status = status


class SmppSession:
    """A bound transceiver. `open()` connects and binds; `closed` is set when it ends."""

    def __init__(self, settings: SmppSettings, on_deliver: DeliverHandler, label: str) -> None:
        self.settings = settings
        self.on_deliver = on_deliver
        self.label = label
        self.closed = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._sequence = 0
        self._waiting: dict[int, tuple[asyncio.Future[Pdu], IdHandler | None]] = {}
        self._window = asyncio.Semaphore(settings.window)
        self._tasks: set[asyncio.Task[None]] = set()
        self._unbinding = False

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._waiting)

    def _next_sequence(self) -> int:
        self._sequence = self._sequence % 0x7FFFFFFF + 1
        return self._sequence

    async def open(self) -> None:
        """Connect and bind; BindRefused or OSError/TimeoutError when that fails."""
        s = self.settings
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(s.host, s.port), s.connect_timeout_s
        )
        self._spawn(self._read_loop(), "read")
        bind = pdu.Bind(
            system_id=s.system_id,
            password=s.password.get_secret_value(),
            system_type=s.system_type,
        )
        try:
            resp = await self.request(pdu.BIND_TRANSCEIVER, bind.encode())
        except BaseException:
            await self.abort()
            raise
        if resp.status != pdu.ESME_ROK:
            await self.abort()
            raise BindRefused(resp.status)
        self._spawn(self._enquire_loop(), "enquire_link")
        log.info("smpp bound", extra={"session": self.label, "smsc": s.host, "port": s.port})

    def _spawn(self, coro: Awaitable[None], what: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(f"{self.label}-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def request(
        self, command_id: int, body: bytes = b"", on_id: IdHandler | None = None
    ) -> Pdu:
        """Send a request and wait for its response (`response_timeout_s`). `on_id` is called
        with a submit_sm_resp's message_id as soon as it is read, before any later PDU."""
        if self._writer is None or self.closed.is_set():
            raise SessionClosed(f"{self.label} is not open")
        seq = self._next_sequence()
        future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = (future, on_id)
        try:
            self._writer.write(Pdu(command_id, 0, seq, body).encode())
            await self._writer.drain()
            return await asyncio.wait_for(future, self.settings.response_timeout_s)
        except TimeoutError:  # an OSError too: no answer in time, the session may be fine
            raise
        except (ConnectionError, OSError) as exc:
            raise SessionClosed(f"{self.label}: {type(exc).__name__}") from exc
        finally:
            self._waiting.pop(seq, None)

    async def submit(self, message: ShortMessage, on_id: IdHandler | None = None) -> Pdu:
        """submit_sm within the window; the submit_sm_resp (its status may be an error)."""
        async with self._window:
            return await self.request(pdu.SUBMIT_SM, message.encode(), on_id)

    async def _read_loop(self) -> None:
        assert self._reader is not None
        try:
            while True:
                p = await pdu.read_pdu(self._reader)
                if p.is_response:
                    self._on_response(p)
                else:
                    await self._on_request(p)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            if not self._unbinding:
                log.warning("smpp connection lost", extra={"session": self.label})
        except pdu.PduError as exc:
            log.warning("smpp peer sent garbage: %s", exc, extra={"session": self.label})
        finally:
            self._close_now()

    def _on_response(self, p: Pdu) -> None:
        entry = self._waiting.get(p.sequence)
        if entry is None:
            log.info("smpp response for nothing waiting", extra={"command": p.name})
            return
        future, on_id = entry
        if on_id is not None and p.command_id == pdu.SUBMIT_SM_RESP and p.status == 0:
            on_id(pdu.decode_id(p.body))
        if not future.done():
            future.set_result(p)

    async def _on_request(self, p: Pdu) -> None:
        if p.command_id == pdu.ENQUIRE_LINK:
            self._send(Pdu(pdu.ENQUIRE_LINK_RESP, 0, p.sequence))
        elif p.command_id == pdu.DELIVER_SM:
            self._spawn(self._deliver(p), "deliver_sm")
        elif p.command_id == pdu.UNBIND:
            self._unbinding = True
            self._send(Pdu(pdu.UNBIND_RESP, 0, p.sequence))
            log.info("smpp peer unbound", extra={"session": self.label})
            self._close_now()
        else:
            self._send(Pdu(pdu.GENERIC_NACK, pdu.ESME_RINVCMDID, p.sequence))

    async def _deliver(self, p: Pdu) -> None:
        """Hand a deliver_sm over; acknowledge only once it is handed over (the SMSC delivers
        it again after ESME_RX_T_APPN, e.g. while Kafka is unavailable)."""
        try:
            message = ShortMessage.decode(p.body)
        except (pdu.PduError, ValueError) as exc:
            log.warning("smpp deliver_sm unreadable: %s", exc, extra={"session": self.label})
            self._send(Pdu(pdu.DELIVER_SM_RESP, pdu.ESME_RSYSERR, p.sequence, pdu.encode_id("")))
            return
        status = pdu.ESME_ROK
        try:
            await self.on_deliver(message)
        except Exception:
            log.warning("deliver_sm not handed over; asking for redelivery", exc_info=True)
            status = pdu.ESME_RX_T_APPN
        self._send(Pdu(pdu.DELIVER_SM_RESP, status, p.sequence, pdu.encode_id("")))

    def _send(self, p: Pdu) -> None:
        if self._writer is not None and not self.closed.is_set():
            self._writer.write(p.encode())

    async def _enquire_loop(self) -> None:
        """enquire_link every `enquire_link_s`; no answer in time ends the session."""
        while not self.closed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closed.wait(), self.settings.enquire_link_s)
                return
            try:
                await self.request(pdu.ENQUIRE_LINK)
            except (SessionClosed, TimeoutError):
                log.warning("smpp enquire_link unanswered", extra={"session": self.label})
                self._close_now()
                return

    def _close_now(self) -> None:
        """End the session at once: fail whatever waits for a response."""
        if self.closed.is_set():
            return
        self.closed.set()
        for future, _ in self._waiting.values():
            if not future.done():
                future.set_exception(SessionClosed(f"{self.label} closed"))
        self._waiting.clear()
        if self._writer is not None:
            self._writer.close()

    async def abort(self) -> None:
        """Close without unbinding and wait for the session's tasks."""
        self._close_now()
        await self._finish()

    async def close(self) -> None:
        """Unbind (briefly waiting for unbind_resp), then close."""
        if not self.closed.is_set():
            self._unbinding = True
            with contextlib.suppress(SessionClosed, TimeoutError):
                await asyncio.wait_for(self.request(pdu.UNBIND), 2.0)
        await self.abort()

    async def _finish(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for t in tasks:
            if not t.done() and t.get_name().endswith(("-read", "-enquire_link")):
                t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._writer is not None:
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
