"""The router's faust agent for `inquiries.received`, in the real router process: a valid
inquiry becomes an inbound comms record (audit topic and timeline); an invalid one is
dead-lettered and the agent goes on."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from aiohttp import ClientSession

from shared.kafka import make_producer
from tests.conftest import StackFactory
from tests.router_support import Reader, header, value


async def test_inquiries_are_recorded_and_bad_ones_dead_lettered(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(services=("router",))
    s = stack.settings()
    t = s.topics
    producer = make_producer(s, "inquiry-test")
    await producer.start()
    try:
        async with Reader(stack.bootstrap, t.audit, t.deadletter) as r:
            await producer.send_and_wait(
                t.inquiries, b'{"schema": "inquiry.received/v1"}', key=b"c-inq"
            )
            inquiry = {
                "schema": "inquiry.received/v1",
                "id": "inq-1",
                "customer_id": "c-inq",
                "channel": "sms",
                "from": "+8613800000042",
                "text": "When is my payment due?",
                "received_at": datetime.now(UTC).isoformat(),
            }
            await producer.send_and_wait(t.inquiries, orjson.dumps(inquiry), key=b"c-inq")
            (dead,) = await r.take(t.deadletter, timeout_s=60)
            assert header(dead, "error") == "invalid_fields"
            assert header(dead, "source-topic") == t.inquiries
            (record,) = await r.take(t.audit, timeout_s=60)
    finally:
        await producer.stop()
    rec = value(record)
    assert rec["direction"] == "inbound" and rec["inquiry_id"] == "inq-1"
    assert rec["recipient"] == "+86138****0042"
    assert record.key == b"c-inq"
    async with ClientSession() as http:
        resp = await http.get(
            f"{stack.router_url}/v1/customers/c-inq/timeline",
            headers={"Authorization": f"Bearer {stack.api_token}"},
        )
        assert resp.status == 200
        records = (await resp.json())["records"]
    assert [x["inquiry_id"] for x in records] == ["inq-1"]
