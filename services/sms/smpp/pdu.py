"""SMPP 3.4 PDUs: the 16-byte header, the bodies tongda sends and reads, and their codec.

Only what an ESME bound as a transceiver needs (and what the test SMSC answers with):
bind_transceiver(_resp), unbind(_resp), enquire_link(_resp), submit_sm(_resp),
deliver_sm(_resp) and generic_nack. submit_sm and deliver_sm share one body layout
(`ShortMessage`), optional TLVs included. Checked against smpplib's codec in the tests.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct(">IIII")
MAX_PDU_BYTES = 64 * 1024  # far above any PDU tongda exchanges; a longer length is garbage

# command_id (SMPP 3.4 §5.1.2.1)
GENERIC_NACK = 0x80000000
BIND_TRANSCEIVER = 0x00000009
BIND_TRANSCEIVER_RESP = 0x80000009
SUBMIT_SM = 0x00000004
SUBMIT_SM_RESP = 0x80000004
DELIVER_SM = 0x00000005
DELIVER_SM_RESP = 0x80000005
UNBIND = 0x00000006
UNBIND_RESP = 0x80000006
ENQUIRE_LINK = 0x00000015
ENQUIRE_LINK_RESP = 0x80000015
RESPONSE_BIT = 0x80000000

# command_status (§5.1.3)
ESME_ROK = 0x00
ESME_RINVMSGLEN = 0x01
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RINVBNDSTS = 0x04
ESME_RALYBND = 0x05
ESME_RSYSERR = 0x08
ESME_RINVSRCADR = 0x0A
ESME_RINVDSTADR = 0x0B
ESME_RINVMSGID = 0x0C
ESME_RBINDFAIL = 0x0D
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RMSGQFUL = 0x14
ESME_RINVESMCLASS = 0x43
ESME_RSUBMITFAIL = 0x45
ESME_RINVDSTTON = 0x50
ESME_RINVDSTNPI = 0x51
ESME_RTHROTTLED = 0x58
ESME_RX_T_APPN = 0x64  # temporary application error: the SMSC delivers the PDU again

# esm_class bits (§5.2.12)
ESM_DELIVERY_RECEIPT = 0x04
ESM_UDHI = 0x40

# data_coding (§5.2.19)
DC_DEFAULT = 0x00  # SMSC default alphabet: GSM 03.38, one septet per octet
DC_LATIN1 = 0x03
DC_UCS2 = 0x08

# TLV tags (§5.3.2)
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_MESSAGE_STATE = 0x0427

COMMAND_NAMES = {
    GENERIC_NACK: "generic_nack",
    BIND_TRANSCEIVER: "bind_transceiver",
    BIND_TRANSCEIVER_RESP: "bind_transceiver_resp",
    SUBMIT_SM: "submit_sm",
    SUBMIT_SM_RESP: "submit_sm_resp",
    DELIVER_SM: "deliver_sm",
    DELIVER_SM_RESP: "deliver_sm_resp",
    UNBIND: "unbind",
    UNBIND_RESP: "unbind_resp",
    ENQUIRE_LINK: "enquire_link",
    ENQUIRE_LINK_RESP: "enquire_link_resp",
}


class PduError(Exception):
    """Bytes that are not a valid PDU (bad length, truncated field, unterminated string)."""


@dataclass(frozen=True)
class Pdu:
    """One PDU: the header fields and the raw body."""

    command_id: int
    status: int
    sequence: int
    body: bytes = b""

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command_id, f"0x{self.command_id:08x}")

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE_BIT)

    def encode(self) -> bytes:
        """The PDU on the wire."""
        return HEADER.pack(16 + len(self.body), self.command_id, self.status, self.sequence) + (
            self.body
        )


async def read_pdu(reader: asyncio.StreamReader) -> Pdu:
    """Read one PDU; asyncio.IncompleteReadError at end of stream, PduError on garbage."""
    head = await reader.readexactly(16)
    length, command_id, status, sequence = HEADER.unpack(head)
    if not 16 <= length <= MAX_PDU_BYTES:
        raise PduError(f"command_length {length} out of range")
    body = await reader.readexactly(length - 16) if length > 16 else b""
    return Pdu(command_id, status, sequence, body)


def decode_pdu(data: bytes) -> Pdu:
    """One PDU from its complete bytes."""
    if len(data) < 16:
        raise PduError("shorter than a header")
    length, command_id, status, sequence = HEADER.unpack_from(data)
    if length != len(data):
        raise PduError(f"command_length {length} but {len(data)} bytes")
    return Pdu(command_id, status, sequence, data[16:])


class _Reader:
    """Reads the fields of a body in order."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def cstring(self, max_len: int) -> str:
        end = self.data.find(b"\x00", self.pos, self.pos + max_len)
        if end < 0:
            raise PduError(f"C-octet string at {self.pos} not terminated within {max_len}")
        value = self.data[self.pos : end].decode("latin-1")
        self.pos = end + 1
        return value

    def u8(self) -> int:
        if self.pos >= len(self.data):
            raise PduError(f"body ends at {self.pos}, an integer was expected")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def octets(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PduError(f"{n} octets expected at {self.pos}, body has {len(self.data)}")
        value = self.data[self.pos : self.pos + n]
        self.pos += n
        return value

    def tlvs(self) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        while self.pos < len(self.data):
            tag, length = struct.unpack(">HH", self.octets(4))
            found[tag] = self.octets(length)
        return found


def _cstr(value: str, max_len: int) -> bytes:
    raw = value.encode("latin-1")
    if len(raw) >= max_len:
        raise ValueError(f"{value!r} longer than {max_len - 1} octets")
    return raw + b"\x00"


def _tlvs(values: dict[int, bytes]) -> bytes:
    return b"".join(struct.pack(">HH", tag, len(v)) + v for tag, v in values.items())


@dataclass(frozen=True)
class Bind:
    """bind_transceiver's body (§4.1.5)."""

    system_id: str
    password: str
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""

    def encode(self) -> bytes:
        return b"".join(
            (
                _cstr(self.system_id, 16),
                _cstr(self.password, 9),
                _cstr(self.system_type, 13),
                bytes((self.interface_version, self.addr_ton, self.addr_npi)),
                _cstr(self.address_range, 41),
            )
        )

    @classmethod
    def decode(cls, body: bytes) -> Bind:
        r = _Reader(body)
        return cls(
            system_id=r.cstring(16),
            password=r.cstring(9),
            system_type=r.cstring(13),
            interface_version=r.u8(),
            addr_ton=r.u8(),
            addr_npi=r.u8(),
            address_range=r.cstring(41),
        )

    def __repr__(self) -> str:  # never show the password
        return f"Bind(system_id={self.system_id!r}, system_type={self.system_type!r})"


def encode_id(value: str) -> bytes:
    """The body of bind_*_resp (system_id), submit_sm_resp (message_id), deliver_sm_resp."""
    return _cstr(value, 66)


def decode_id(body: bytes) -> str:
    """What `encode_id` wrote; "" for an empty body (an error response may have none)."""
    if not body:
        return ""
    return _Reader(body).cstring(66)


@dataclass(frozen=True)
class ShortMessage:
    """The body of submit_sm and deliver_sm (§4.4.1, §4.6.1)."""

    source_addr: str
    destination_addr: str
    short_message: bytes = b""
    esm_class: int = 0
    data_coding: int = DC_DEFAULT
    registered_delivery: int = 0
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    service_type: str = ""
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    replace_if_present_flag: int = 0
    sm_default_msg_id: int = 0
    tlvs: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        if len(self.short_message) > 254:
            raise ValueError("short_message longer than 254 octets (use message_payload)")
        return b"".join(
            (
                _cstr(self.service_type, 6),
                bytes((self.source_addr_ton, self.source_addr_npi)),
                _cstr(self.source_addr, 21),
                bytes((self.dest_addr_ton, self.dest_addr_npi)),
                _cstr(self.destination_addr, 21),
                bytes((self.esm_class, self.protocol_id, self.priority_flag)),
                _cstr(self.schedule_delivery_time, 17),
                _cstr(self.validity_period, 17),
                bytes(
                    (
                        self.registered_delivery,
                        self.replace_if_present_flag,
                        self.data_coding,
                        self.sm_default_msg_id,
                        len(self.short_message),
                    )
                ),
                self.short_message,
                _tlvs(self.tlvs),
            )
        )

    @classmethod
    def decode(cls, body: bytes) -> ShortMessage:
        r = _Reader(body)
        service_type = r.cstring(6)
        source_ton, source_npi = r.u8(), r.u8()
        source_addr = r.cstring(21)
        dest_ton, dest_npi = r.u8(), r.u8()
        destination_addr = r.cstring(21)
        esm_class, protocol_id, priority_flag = r.u8(), r.u8(), r.u8()
        schedule = r.cstring(17)
        validity = r.cstring(17)
        registered, replace, data_coding, default_msg_id, sm_length = (
            r.u8(),
            r.u8(),
            r.u8(),
            r.u8(),
            r.u8(),
        )
        short_message = r.octets(sm_length)
        return cls(
            source_addr=source_addr,
            destination_addr=destination_addr,
            short_message=short_message,
            esm_class=esm_class,
            data_coding=data_coding,
            registered_delivery=registered,
            source_addr_ton=source_ton,
            source_addr_npi=source_npi,
            dest_addr_ton=dest_ton,
            dest_addr_npi=dest_npi,
            service_type=service_type,
            protocol_id=protocol_id,
            priority_flag=priority_flag,
            schedule_delivery_time=schedule,
            validity_period=validity,
            replace_if_present_flag=replace,
            sm_default_msg_id=default_msg_id,
            tlvs=r.tlvs(),
        )

    @property
    def payload(self) -> bytes:
        """The message octets: message_payload when present, else short_message."""
        return self.tlvs.get(TLV_MESSAGE_PAYLOAD, self.short_message)
