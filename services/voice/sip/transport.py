"""The SIP UDP endpoint all calls share: one socket, responses routed to their client
transaction by (Via branch, CSeq method), requests to their dialog by Call-ID."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Callable
from typing import cast

from services.voice.sip.message import SipMessage, SipParseError, parse

log = logging.getLogger(__name__)

Handler = Callable[[SipMessage], None]
BRANCH_MAGIC = "z9hG4bK"  # RFC 3261 §8.1.1.7


def new_branch() -> str:
    return BRANCH_MAGIC + secrets.token_hex(10)


def new_tag() -> str:
    return secrets.token_hex(6)


class SipEndpoint(asyncio.DatagramProtocol):
    """The UAC's UDP transport to the proxy."""

    def __init__(self, proxy: tuple[str, int]) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self.advertised_host = "127.0.0.1"
        self._transactions: dict[tuple[str, str], Handler] = {}
        self._dialogs: dict[str, Handler] = {}

    @classmethod
    async def open(
        cls, proxy: tuple[str, int], host: str, port: int, advertised: str | None
    ) -> SipEndpoint:
        loop = asyncio.get_running_loop()
        _, endpoint = await loop.create_datagram_endpoint(
            lambda: cls(proxy), local_addr=(host, port)
        )
        endpoint.advertised_host = advertised or _route_address(proxy, endpoint.local[0])
        return endpoint

    @property
    def port(self) -> int:
        return self.local[1]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        self.local = transport.get_extra_info("sockname")[:2]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def send(self, message: SipMessage, addr: tuple[str, int] | None = None) -> None:
        if self.transport is not None:
            self.transport.sendto(message.encode(), addr or self.proxy)

    def add_transaction(self, branch: str, method: str, handler: Handler) -> None:
        self._transactions[(branch, method)] = handler

    def remove_transaction(self, branch: str, method: str) -> None:
        self._transactions.pop((branch, method), None)

    def add_dialog(self, call_id: str, handler: Handler) -> None:
        self._dialogs[call_id] = handler

    def remove_dialog(self, call_id: str) -> None:
        self._dialogs.pop(call_id, None)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not data.strip():
            return  # keep-alive (RFC 5626 CRLF)
        try:
            message = parse(data)
        except SipParseError as exc:
            log.debug("dropped a datagram that is not SIP: %s", exc)
            return
        if message.is_request:
            handler = self._dialogs.get(message.get("Call-ID") or "")
            if handler is not None:
                handler(message)
            elif message.method != "ACK":
                self.send(response_to(message, 481, "Call/Transaction Does Not Exist"), _addr(addr))
            return
        branch = message.branch or ""
        handler = self._transactions.get((branch, message.cseq[1]))
        if handler is not None:
            handler(message)


def response_to(
    request: SipMessage, status: int, reason: str, to_tag: str | None = None
) -> SipMessage:
    """A response echoing the request's Via, From, To (tag added), Call-ID and CSeq."""
    response = SipMessage(status=status, reason=reason)
    for name, value in request.headers:
        if name.lower() in ("via", "from", "call-id", "cseq"):
            response.add(name, value)
        elif name.lower() == "to":
            tagged = value if to_tag is None or ";tag=" in value else f"{value};tag={to_tag}"
            response.add(name, tagged)
    return response


def _addr(addr: tuple[str | object, int]) -> tuple[str, int]:
    return str(addr[0]), int(addr[1])


def _route_address(proxy: tuple[str, int], bound: str) -> str:
    """The local address the kernel would use to reach the proxy."""
    if bound not in ("0.0.0.0", "::", ""):
        return bound
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(proxy)
        return str(probe.getsockname()[0])
    return "127.0.0.1"
