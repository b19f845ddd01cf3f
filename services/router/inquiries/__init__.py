"""Borrowers' inbound messages: the sender index, the inquiries desk, their records."""

from services.router.inquiries.desk import InquiryDesk
from services.router.inquiries.index import SenderIndex

__all__ = ["InquiryDesk", "SenderIndex"]
