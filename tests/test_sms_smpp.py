"""The SMPP 3.4 provider against the test SMSC (services/sms/smpp/testsmsc.py) on loopback:
bind, submit and receipts, UCS-2 and concatenated texts, throttling, a dropped bind, MO
messages, enquire_link, credentials kept out of logs; the codec checked against smpplib's."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from channel_support import collect, create_topics, dispatch, produce, serving
from redis.asyncio import Redis
from smpplib import command_codes as smpplib_command_codes
from smpplib import consts as smpplib_consts
from smpplib import gsm as smpplib_gsm
from smpplib import smpp as smpplib_smpp

from services.sms.smpp import pdu
from services.sms.smpp.pdu import Bind, Pdu, ShortMessage
from services.sms.smpp.provider import SmppProvider, SmppUnavailable
from services.sms.smpp.session import SessionClosed
from services.sms.smpp.settings import SmppSettings, load_smpp_settings
from services.sms.smpp.testsmsc import TestSmsc
from services.sms.smpp.text import (
    decode_payload,
    encode_text,
    gsm_chars,
    parse_receipt,
    split_udh,
)
from shared.channel.app import create_app
from shared.channel.provider import Accepted, Completed, Inbound, ProviderContext, Receipt
from shared.config import ChannelSettings
from shared.contract.codec import decode, dumps
from shared.contract.models import AttemptOutcome, InquiryReceived
from shared.errors import ConfigError
from shared.templates import Message

pytest_plugins = ["channel_support"]

PASSWORD = "s3cr3t!x"  # 8 octets: SMPP's longest password
CHINESE = "您的贷款本期应还1200.00元，请于11月25日前还款。"
LONG_CHINESE = ("尊敬的客户，您的贷款本期应还款金额为人民币一千二百元整，" * 11)[:300]


@dataclass
class Sink:
    """The service side of ProviderContext: receipts and inbound messages as they come."""

    receipts: list[Receipt] = field(default_factory=list)
    inbound: list[Inbound] = field(default_factory=list)
    fail_inbound: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_receipt(self, receipt: Receipt) -> bool:
        self.receipts.append(receipt)
        self.changed.set()
        return True

    async def on_inbound(self, inbound: Inbound) -> str:
        if self.fail_inbound:
            raise ConnectionError("kafka down")
        self.inbound.append(inbound)
        self.changed.set()
        return "inquiry-1"

    async def wait(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        async def until() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), within_s)


@pytest.fixture
async def smsc() -> AsyncIterator[TestSmsc]:
    async with TestSmsc(system_id="tongda", password=PASSWORD) as server:
        yield server


def smpp_settings(smsc: TestSmsc, **overrides: Any) -> SmppSettings:
    values: dict[str, Any] = {
        "port": smsc.port,
        "system_id": "tongda",
        "password": PASSWORD,
        "rebind_min_s": 0.05,
        "rebind_max_s": 0.2,
        "throttle_backoff_s": 0.05,
        "response_timeout_s": 3.0,
    }
    return SmppSettings(**{**values, **overrides})


@pytest.fixture
async def started(
    smsc: TestSmsc, redis: Redis, redis_server: str
) -> AsyncIterator[Callable[..., Any]]:
    providers: list[SmppProvider] = []

    async def start(**overrides: Any) -> tuple[SmppProvider, Sink]:
        sink = Sink()
        provider = SmppProvider(smpp_settings(smsc, **overrides))
        ctx = ProviderContext(
            ChannelSettings(redis_url=redis_server, key_prefix="t:"),
            redis,
            sink.on_receipt,
            sink.on_inbound,
        )
        await provider.start(ctx)
        providers.append(provider)
        await provider.wait_bound(5.0)
        return provider, sink

    yield start
    for p in providers:
        await p.close()


def sms(text: str) -> Message:
    return Message(subject="", body=text)


# --- the codec against a second implementation (smpplib) ---


def test_submit_sm_encoded_here_parses_in_smpplib() -> None:
    encoded = encode_text(LONG_CHINESE, ref=0x2A)
    sm = ShortMessage(
        source_addr="TONGDA",
        source_addr_ton=5,
        destination_addr="8613800138000",
        dest_addr_ton=1,
        dest_addr_npi=1,
        esm_class=encoded.esm_class,
        data_coding=encoded.data_coding,
        registered_delivery=1,
        short_message=encoded.parts[0],
    )
    raw = Pdu(pdu.SUBMIT_SM, 0, 77, sm.encode()).encode()
    theirs = smpplib_smpp.parse_pdu(raw, client=None, sequence=0)
    assert (theirs.command, theirs.sequence) == ("submit_sm", 77)
    assert theirs.destination_addr == b"8613800138000"
    assert (theirs.esm_class, theirs.data_coding, theirs.registered_delivery) == (0x40, 8, 1)
    assert theirs.short_message == encoded.parts[0]
    assert ShortMessage.decode(raw[16:]) == sm


def test_pdus_encoded_by_smpplib_decode_here() -> None:
    bind = smpplib_smpp.make_pdu(
        "bind_transceiver",
        client=None,
        sequence=1,
        system_id="tongda",
        password=PASSWORD,
        system_type="",
        interface_version=0x34,
    ).generate()
    got = pdu.decode_pdu(bind)
    assert got.command_id == pdu.BIND_TRANSCEIVER
    assert Bind.decode(got.body) == Bind("tongda", PASSWORD)
    receipt_text = b"id:1a2b sub:001 dlvrd:001 submit date:2611231200 done date:2611231201 stat:DELIVRD err:000 text:"  # noqa: E501
    deliver = smpplib_smpp.make_pdu(
        "deliver_sm",
        client=None,
        sequence=9,
        source_addr="8613800138000",
        destination_addr="TONGDA",
        esm_class=4,
        short_message=receipt_text,
        receipted_message_id="1a2b",
        message_state=2,
    ).generate()
    sm = ShortMessage.decode(pdu.decode_pdu(deliver).body)
    assert sm.esm_class == pdu.ESM_DELIVERY_RECEIPT
    assert sm.short_message == receipt_text
    assert sm.tlvs[pdu.TLV_RECEIPTED_MESSAGE_ID] == b"1a2b\x00"
    assert sm.tlvs[pdu.TLV_MESSAGE_STATE] == b"\x02"
    resp = smpplib_smpp.make_pdu(
        "submit_sm_resp", client=None, sequence=3, message_id="MSG9", status=0x58
    ).generate()
    got = pdu.decode_pdu(resp)
    assert (got.status, pdu.decode_id(got.body)) == (pdu.ESME_RTHROTTLED, "MSG9")


def test_command_ids_statuses_and_tags_match_smpplib() -> None:
    for code, name in pdu.COMMAND_NAMES.items():
        assert smpplib_command_codes.get_command_code(name) == code, name
    statuses = {n: v for n, v in vars(pdu).items() if n.startswith("ESME_")}
    assert len(statuses) >= 20
    for name, value in statuses.items():
        assert getattr(smpplib_consts, f"SMPP_{name}") == value, name
    tags = smpplib_consts.OPTIONAL_PARAMS
    assert tags["receipted_message_id"] == pdu.TLV_RECEIPTED_MESSAGE_ID
    assert tags["message_state"] == pdu.TLV_MESSAGE_STATE
    assert tags["message_payload"] == pdu.TLV_MESSAGE_PAYLOAD


def test_garbage_is_refused() -> None:
    with pytest.raises(pdu.PduError):
        ShortMessage.decode(b"\x00\x05\x00TONG")  # source_addr never terminated
    with pytest.raises(pdu.PduError):
        pdu.decode_pdu(b"\x00\x00\x00\x20" + bytes(12))  # length says 32, 16 bytes given


# --- text encoding, concatenation, receipts ---


def test_gsm_text_is_one_part_up_to_160_and_153_septets_per_part_after() -> None:
    assert len(encode_text("a" * 160, 1).parts) == 1
    long = encode_text("Repay {by} 25 Nov " * 12, 9)  # 216 chars, braces take two septets
    assert long.data_coding == pdu.DC_DEFAULT and long.esm_class == pdu.ESM_UDHI
    assert all(len(p) - 6 <= 153 for p in long.parts)
    text = "".join(decode_payload(0, split_udh(p)[1]) for p in long.parts)
    assert text == "Repay {by} 25 Nov " * 12  # no escape pair cut between parts


def test_gsm_septets_match_smpplib() -> None:
    text = "Hello @£$¥ èé ΔΦ_ {}[]~€|^\\ ÄÖÑÜäöñüà ¡¿ 0-9:;<=>? Øø Åå ÆæßÉ !\"#¤%&'()*+,-./"
    ours = gsm_chars(text)
    assert ours is not None
    assert b"".join(ours) == smpplib_gsm.gsm_encode(text)
    assert decode_payload(pdu.DC_DEFAULT, b"".join(ours)) == text
    assert gsm_chars("还款") is None


def test_chinese_goes_as_ucs2_split_in_67_character_parts() -> None:
    assert encode_text(CHINESE, 1).data_coding == pdu.DC_UCS2
    assert len(encode_text("您" * 70, 1).parts) == 1
    encoded = encode_text(LONG_CHINESE, 0x33)
    assert len(encoded.parts) == 5  # 300 / 67
    for seq, part in enumerate(encoded.parts, 1):
        concat, _ = split_udh(part)
        assert concat is not None and (concat.ref, concat.total, concat.seq) == (0x33, 5, seq)
    assert "".join(decode_payload(8, split_udh(p)[1]) for p in encoded.parts) == LONG_CHINESE


def test_receipt_text_fields() -> None:
    fields = parse_receipt(
        "id:0a1B sub:001 dlvrd:000 submit date:2611231200 done date:2611231205 "
        "stat:UNDELIV err:034 text:id:zz stat:DELIVRD"
    )
    assert fields["id"] == "0a1B"
    assert fields["stat"] == "UNDELIV"
    assert fields["err"] == "034"
    assert fields["done date"] == "2611231205"
    assert fields["text"] == "id:zz stat:DELIVRD"  # the free text cannot fake a field


# --- the provider against the test SMSC ---


async def test_bind_submit_and_delivered_receipt(started: Any, smsc: TestSmsc) -> None:
    provider, sink = await started()
    result = await provider.send(dispatch("sms", "+8613800138001"), sms("Your code is 1234"))
    assert isinstance(result, Accepted)
    await sink.wait(lambda: len(sink.receipts) == 1)
    receipt = sink.receipts[0]
    assert receipt.provider_message_id == result.provider_message_id
    assert receipt.outcome == "delivered"
    assert "stat:DELIVRD" in (receipt.detail or "")
    [sub] = smsc.submits
    assert sub.message.destination_addr == "8613800138001"
    assert (sub.message.dest_addr_ton, sub.message.dest_addr_npi) == (1, 1)
    assert sub.message.source_addr == "TONGDA"
    assert sub.message.registered_delivery == 1
    await smsc.wait_for(lambda: smsc.receipt_acks == [pdu.ESME_ROK])  # acknowledged once handed


async def test_chinese_text_round_trips_as_ucs2(started: Any, smsc: TestSmsc) -> None:
    provider, _ = await started()
    await provider.send(dispatch("sms", "+8613800138001"), sms(CHINESE))
    [sub] = smsc.submits
    assert sub.message.data_coding == pdu.DC_UCS2
    assert sub.message.esm_class == 0
    assert sub.message.short_message.decode("utf-16-be") == CHINESE


async def test_300_characters_go_as_concatenated_parts_with_one_receipt(
    started: Any, smsc: TestSmsc
) -> None:
    provider, sink = await started()
    result = await provider.send(dispatch("sms", "+8613800138001"), sms(LONG_CHINESE))
    assert isinstance(result, Accepted)
    parts = smsc.submits
    assert len(parts) == 5
    headers = [split_udh(p.message.short_message)[0] for p in parts]
    assert {h.ref for h in headers if h} == {headers[0].ref if headers[0] else -1}
    assert [(h.total, h.seq) for h in headers if h] == [(5, i) for i in range(1, 6)]
    assert all(p.message.esm_class & pdu.ESM_UDHI for p in parts)
    assert b"".join(p.text_octets for p in parts).decode("utf-16-be") == LONG_CHINESE
    # five receipts from the SMSC, one for the attempt, known by the first part's id
    await smsc.wait_for(lambda: len(smsc.receipt_acks) == 5)
    await sink.wait(lambda: len(sink.receipts) >= 1)
    assert [(r.provider_message_id, r.outcome) for r in sink.receipts] == [
        (parts[0].message_id, "delivered")
    ]
    assert result.provider_message_id == parts[0].message_id


@pytest.mark.parametrize(
    ("number", "outcome", "stat"),
    [("+8613800130005", "failed", "UNDELIV"), ("+8613800130006", "rejected", "REJECTD")],
)
async def test_failed_receipts_map_to_outcomes(
    started: Any, number: str, outcome: str, stat: str
) -> None:
    provider, sink = await started()
    result = await provider.send(dispatch("sms", number), sms("hello"))
    assert isinstance(result, Accepted)
    await sink.wait(lambda: len(sink.receipts) == 1)
    assert sink.receipts[0].outcome == outcome
    assert f"stat:{stat}" in (sink.receipts[0].detail or "")


async def test_receipt_tlvs_are_preferred(smsc: TestSmsc, started: Any) -> None:
    smsc.receipt_tlvs = True
    provider, sink = await started()
    result = await provider.send(dispatch("sms", "+8613800130006"), sms("hello"))
    await sink.wait(lambda: len(sink.receipts) == 1)
    assert isinstance(result, Accepted)
    assert sink.receipts[0].provider_message_id == result.provider_message_id
    assert sink.receipts[0].outcome == "rejected"


async def test_invalid_destination_is_rejected_at_once(started: Any) -> None:
    provider, _ = await started()
    result = await provider.send(dispatch("sms", "+8613800130003"), sms("hello"))
    assert isinstance(result, Completed)
    assert result.outcome == "rejected"
    assert "ESME_RINVDSTADR" in (result.detail or "")


@pytest.mark.parametrize("rate", [200.0, 0.0], ids=["shared-bucket", "no-bucket"])
async def test_throttled_submit_is_resubmitted_after_a_pause(
    started: Any, smsc: TestSmsc, rate: float
) -> None:
    provider, sink = await started(rate_per_s=rate, throttle_backoff_s=0.2)
    smsc.throttle = 2
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await provider.send(dispatch("sms", "+8613800138001"), sms("hello"))
    assert loop.time() - began >= 0.35  # two pauses of 0.2 s (less the bucket's rounding)
    assert isinstance(result, Accepted)
    assert smsc.throttled == 2
    assert [s.status for s in smsc.submits] == [pdu.ESME_ROK]
    await sink.wait(lambda: len(sink.receipts) == 1)


async def test_dropped_bind_fails_the_submit_in_flight_then_rebinds(
    started: Any, smsc: TestSmsc
) -> None:
    provider, sink = await started()
    smsc.stall = True
    send = asyncio.create_task(provider.send(dispatch("sms", "+8613800138001"), sms("one")))
    await smsc.wait_for(lambda: len(smsc.stalled) == 1)
    smsc.drop()
    with pytest.raises(SessionClosed):
        await send
    smsc.stall = False
    await smsc.wait_for(lambda: smsc.binds == 2)
    await provider.wait_bound(5.0)
    result = await provider.send(dispatch("sms", "+8613800138001"), sms("two"))
    assert isinstance(result, Accepted)
    await sink.wait(lambda: len(sink.receipts) == 1)


async def test_mo_messages_go_to_on_inbound(started: Any, smsc: TestSmsc) -> None:
    _, sink = await started()
    assert await smsc.send_mo("+8613800138000", "我想改还款日期") == [pdu.ESME_ROK]
    long_reply = "我上个月已经还过了，为什么还在催款？请核实。" * 8
    assert await smsc.send_mo("+8613800138000", long_reply, ref=99) == [pdu.ESME_ROK] * 3
    await sink.wait(lambda: len(sink.inbound) == 2)
    assert [(i.from_, i.text) for i in sink.inbound] == [
        ("+8613800138000", "我想改还款日期"),
        ("+8613800138000", long_reply),
    ]


async def test_mo_not_handed_over_is_not_acknowledged(started: Any, smsc: TestSmsc) -> None:
    _, sink = await started()
    sink.fail_inbound = True
    assert await smsc.send_mo("+8613800138000", "hello") == [pdu.ESME_RX_T_APPN]


async def test_enquire_link_keeps_the_session(started: Any, smsc: TestSmsc) -> None:
    provider, _ = await started(enquire_link_s=0.05)
    await smsc.wait_for(lambda: smsc.enquire_links >= 3)
    assert smsc.binds == 1 and smsc.bound_peers == 1
    assert isinstance(await provider.send(dispatch("sms", "+8613800138001"), sms("x")), Accepted)


async def test_wrong_password_never_binds_and_is_never_logged(
    smsc: TestSmsc, redis: Redis, redis_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ngpw9"
    settings = smpp_settings(smsc, password=wrong, bind_wait_s=0.2)
    sink = Sink()
    provider = SmppProvider(settings)
    ctx = ProviderContext(
        ChannelSettings(redis_url=redis_server), redis, sink.on_receipt, sink.on_inbound
    )
    await provider.start(ctx)
    try:
        await smsc.wait_for(lambda: smsc.bind_failures >= 2)
        with pytest.raises(SmppUnavailable):
            await provider.send(dispatch("sms", "+8613800138001"), sms("x"))
    finally:
        await provider.close()
    assert "bind refused" in caplog.text
    assert wrong not in caplog.text and wrong not in repr(settings)
    assert smsc.binds == 0


async def test_right_password_from_a_file_binds_and_is_never_logged(
    smsc: TestSmsc, started: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    provider, _ = await started(password="", password_file=str(secret))
    await provider.send(dispatch("sms", "+8613800138001"), sms("hello"))
    assert smsc.binds == 1
    assert PASSWORD not in caplog.text


def test_unreadable_password_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PASSWORD_FILE"):
        load_smpp_settings(password_file=str(tmp_path / "missing"))


async def test_the_bucket_holds_submits_to_the_contracted_rate(
    started: Any, smsc: TestSmsc
) -> None:
    provider, _ = await started(rate_per_s=40, rate_burst=1, window=5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    results = await asyncio.gather(
        *(provider.send(dispatch("sms", "+8613800138001"), sms("x")) for _ in range(13))
    )
    elapsed = loop.time() - began
    assert all(isinstance(r, Accepted) for r in results)
    assert elapsed >= 12 / 40 * 0.9  # one token at once, twelve at 40/s


# --- in the sms service, on the real broker ---


async def test_sms_service_with_smpp_reports_outcomes_and_inquiries(
    make_settings: Callable[..., ChannelSettings], smsc: TestSmsc
) -> None:
    s = make_settings("sms", provider="smpp")
    await create_topics(s)
    provider = SmppProvider(smpp_settings(smsc))
    data = {"loan_id": "L-1", "amount_due": "1200.00", "currency": "CNY", "due_date": "2026-11-25"}
    d = dispatch("sms", "+8613800130006", data=data)
    async with serving(create_app(s, provider), s.http_port):
        await provider.wait_bound(5.0)
        await produce(s, s.topics.dispatch("sms"), [(d.customer_id.encode(), dumps(d))])
        [record] = await collect(s, s.topics.router_inbox, 1)
        await smsc.send_mo("+8613800138000", "我已还款")
        [inquiry] = await collect(s, s.topics.inquiries, 1)
    outcome = decode(record.value, AttemptOutcome)
    assert (outcome.notification_id, outcome.outcome, outcome.provider) == (
        d.notification_id,
        "rejected",
        "smpp",
    )
    assert outcome.provider_message_id == smsc.submits[0].message_id
    received = decode(inquiry.value, InquiryReceived)
    assert (received.channel, received.text) == ("sms", "我已还款")


async def test_several_binds_share_the_sends(started: Any, smsc: TestSmsc) -> None:
    provider, sink = await started(binds=2)
    await smsc.wait_for(lambda: smsc.bound_peers == 2)
    await asyncio.gather(
        *(provider.send(dispatch("sms", "+8613800138001"), sms(f"m{i}")) for i in range(6))
    )
    assert len(provider.sessions) == 2
    assert len(smsc.submits) == 6
    await sink.wait(lambda: len(sink.receipts) == 6)


async def test_a_long_text_with_an_undelivered_part_fails_once(
    started: Any, smsc: TestSmsc
) -> None:
    provider, sink = await started()
    result = await provider.send(dispatch("sms", "+8613800130005"), sms(LONG_CHINESE))
    assert isinstance(result, Accepted)
    await smsc.wait_for(lambda: len(smsc.receipt_acks) == 5)
    await sink.wait(lambda: len(sink.receipts) >= 1)
    assert [(r.provider_message_id, r.outcome) for r in sink.receipts] == [
        (result.provider_message_id, "failed")
    ]


def test_settings_refuse_what_smpp_cannot_carry() -> None:
    with pytest.raises(ConfigError, match="TONGDA_SMPP_PASSWORD"):
        load_smpp_settings(password="longer-than-8")
    with pytest.raises(ConfigError, match="TONGDA_SMPP_WINDOW"):
        load_smpp_settings(window=0)


async def test_a_long_texts_receipts_reaching_another_replica_resolve_it(
    started: Any, smsc: TestSmsc
) -> None:
    sender, sender_sink = await started()
    _, other_sink = await started()  # a second replica, on the same account
    await smsc.wait_for(lambda: smsc.bound_peers == 2)
    smsc.receipts_elsewhere = True
    smsc.receipt_delay_s = 0.2  # the SMSC's delivery takes a moment
    result = await sender.send(dispatch("sms", "+8613800138001"), sms(LONG_CHINESE))
    assert isinstance(result, Accepted)
    await smsc.wait_for(lambda: len(smsc.receipt_acks) == 5)
    await other_sink.wait(lambda: len(other_sink.receipts) >= 1)
    assert [(r.provider_message_id, r.outcome) for r in other_sink.receipts] == [
        (result.provider_message_id, "delivered")
    ]
    assert sender_sink.receipts == []


async def test_close_does_not_wait_for_a_bind_nobody_answers(
    redis: Redis, redis_server: str
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the bind, never answers
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink = Sink()
    provider = SmppProvider(
        SmppSettings(
            port=port, system_id="tongda", password=PASSWORD, response_timeout_s=30, bind_wait_s=0.2
        )
    )
    provider.close_wait_s = 0.2
    ctx = ProviderContext(
        ChannelSettings(redis_url=redis_server), redis, sink.on_receipt, sink.on_inbound
    )
    await provider.start(ctx)
    with pytest.raises(SmppUnavailable):  # bind_wait_s, while the bind is unanswered
        await provider.send(dispatch("sms", "+8613800138001"), sms("x"))
    loop = asyncio.get_running_loop()
    began = loop.time()
    await provider.close()
    assert loop.time() - began < 2.0
    server.close()
    await server.wait_closed()


async def test_an_unanswered_submit_times_out_and_the_session_stays(
    started: Any, smsc: TestSmsc
) -> None:
    provider, sink = await started(response_timeout_s=0.2)
    smsc.stall = True
    with pytest.raises(TimeoutError):
        await provider.send(dispatch("sms", "+8613800138001"), sms("lost"))
    smsc.stall = False
    assert isinstance(await provider.send(dispatch("sms", "+8613800138001"), sms("x")), Accepted)
    assert smsc.binds == 1 and len(provider.sessions) == 1
    await sink.wait(lambda: len(sink.receipts) == 1)
