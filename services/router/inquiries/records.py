"""The comms records of inbound messages (`comms.record/v1`, direction `inbound`)."""

from __future__ import annotations

import uuid

from services.router.machine import RECORD_NS
from shared.contract.models import CommsRecord, InquiryReceived, Tier
from shared.masking import mask_address


def inbound_record(
    inq: InquiryReceived,
    customer_id: str | None,
    intent: str,
    tier: Tier | None,
    decision: str,
    inquiry_id: str | None = None,
) -> CommsRecord:
    """The record of one inbound message: who (masked), on which channel, what tongda made
    of it (`decision`, e.g. `answered: reply.due_date`, `escalated: urgent`), no text.
    `inquiry_id`: the inquiry it belongs to, when not its own (a survey answer)."""
    return CommsRecord(
        record_id=str(uuid.uuid5(RECORD_NS, f"inquiry:{inq.id}")),
        inquiry_id=inquiry_id or inq.id,
        customer_id=customer_id,
        channel=inq.channel,
        recipient=mask_address(inq.channel, inq.from_),
        direction="inbound",
        decision=decision,
        at=inq.received_at,
        intent=intent,
        tier=tier,
    )
