"""Inquiry intents: classify a borrower's message into the contract's intent and tier.

    classifier = Classifier.from_file(settings.intents_path)   # at start-up; ConfigError if bad
    result = classifier.classify(inquiry.text, inquiry.channel)
    respond_by = inquiry.received_at + respond_by_delta(result.tier)   # when result.tier

Rules live in YAML (`rules/intents.yaml`); see docs/inquiries.md.
"""

from services.router.intents.classifier import (
    RESPOND_BY,
    Classification,
    Classifier,
    Scope,
    respond_by_delta,
)
from services.router.intents.rules import (
    CONTRACT_TIERS,
    SHIPPED_RULES,
    TIERS,
    RuleBook,
    Tier,
    load_rules,
)

__all__ = [
    "CONTRACT_TIERS",
    "RESPOND_BY",
    "SHIPPED_RULES",
    "TIERS",
    "Classification",
    "Classifier",
    "RuleBook",
    "Scope",
    "Tier",
    "load_rules",
    "respond_by_delta",
]
