"""The outside contract (docs/CONTRACT.md) as typed models, plus tongda's internal messages."""

from shared.contract.models import (
    Attempt,
    Channel,
    CommsRecord,
    Contacts,
    CustomerProfile,
    FinalStatus,
    InquiryEscalated,
    InquiryReceived,
    NotificationRequested,
    NotificationStatus,
    Outcome,
    Priority,
)

__all__ = [
    "Attempt",
    "Channel",
    "CommsRecord",
    "Contacts",
    "CustomerProfile",
    "FinalStatus",
    "InquiryEscalated",
    "InquiryReceived",
    "NotificationRequested",
    "NotificationStatus",
    "Outcome",
    "Priority",
]
