"""The intent rules: a YAML file of keyword and pattern lists per intent, validated at start-up.

The shipped file is `rules/intents.yaml`; an operator points `TONGDA_INTENTS_PATH` at their own.
A bad file (unreadable, not YAML, a duplicate key, an unknown field, a regular expression that
does not compile, a contract intent missing or in the wrong tier) raises ConfigError naming
the file and the field, so the router refuses to start instead of misclassifying.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from services.router.intents.normalize import whole
from shared.contract.codec import describe_validation_error
from shared.contract.models import Tier as Tier
from shared.errors import ConfigError

SHIPPED_RULES = Path(__file__).with_name("rules") / "intents.yaml"

TIERS: tuple[Tier, ...] = ("urgent", "high", "normal")  # precedence, highest first

# The contract's intents and tiers: a rules file must define each of these in this tier.
CONTRACT_TIERS: dict[str, Tier] = {
    "fraud": "urgent",
    "hardship": "urgent",
    "harassment_complaint": "urgent",
    "complaint": "high",
    "dispute": "high",
    "callback_request": "high",
    "amount_due": "normal",
    "due_date": "normal",
    "how_to_repay": "normal",
    "interest_rate": "normal",
}
# Decided by the classifier itself, never by a rule.
OTHER = "other"
RESERVED = frozenset({OTHER, "opt_out", "opt_in", "feedback"})


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return pattern


def _not_reserved(name: str) -> str:
    if name in RESERVED:
        raise ValueError(f"{name!r} is decided by the classifier, not by a rule")
    return name


Text = Annotated[str, Field(min_length=1)]
Pattern = Annotated[str, Field(min_length=1), AfterValidator(_compiles)]
Locale = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]
IntentName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$"), AfterValidator(_not_reserved)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IntentRule(_Frozen):
    """One intent: it matches when any keyword or pattern is found and no `exclude` is."""

    tier: Tier
    description: str = ""
    keywords: dict[Locale, list[Text]] = Field(default_factory=dict)
    patterns: dict[Locale, list[Pattern]] = Field(default_factory=dict)
    exclude: dict[Locale, list[Pattern]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _has_a_rule(self) -> IntentRule:
        if not any(self.keywords.values()) and not any(self.patterns.values()):
            raise ValueError("an intent needs at least one keyword or pattern")
        return self


class Keywords(_Frozen):
    """Whole-message keywords (the contract's opt-out and opt-in words)."""

    opt_out: list[Text] = Field(min_length=1)
    opt_out_all: list[Text] = Field(min_length=1)
    opt_in: list[Text] = Field(min_length=1)

    @model_validator(mode="after")
    def _disjoint(self) -> Keywords:
        seen: dict[str, str] = {}
        for field in ("opt_out", "opt_out_all", "opt_in"):
            for word in getattr(self, field):
                key = whole(word)
                if not key:
                    raise ValueError(f"{field}: {word!r} is empty once trimmed")
                if key in seen and seen[key] != field:
                    raise ValueError(f"{word!r} is in both {seen[key]} and {field}")
                seen[key] = field
        return self


class Feedback(_Frozen):
    """A message that is only a score (`5`, `５`, `5分`, `5 stars`, `五星`)."""

    scores: dict[Text, Annotated[int, Field(ge=1, le=5)]] = Field(min_length=1)
    suffixes: list[Text] = Field(default_factory=list)


class RuleBook(_Frozen):
    version: Literal[1]
    # Only the first max_chars characters of a message are matched against the intent rules
    # (a borrower states the point first; a huge email must not cost the router seconds).
    max_chars: int = Field(default=2000, ge=100)
    variants: dict[Text, Text] = Field(default_factory=dict)
    keywords: Keywords
    feedback: Feedback
    # Order matters: within a tier, an intent listed earlier wins.
    intents: dict[IntentName, IntentRule] = Field(min_length=1)

    @field_validator("intents")
    @classmethod
    def _contract_intents(cls, intents: dict[str, IntentRule]) -> dict[str, IntentRule]:
        for name, tier in CONTRACT_TIERS.items():
            rule = intents.get(name)
            if rule is None:
                raise ValueError(f"the contract's intent {name!r} is missing")
            if rule.tier != tier:
                raise ValueError(f"intent {name!r} must be tier {tier!r}, not {rule.tier!r}")
        return intents


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader refusing a duplicate key (plain YAML would silently keep the last one)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {line})", key_node.start_mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_rules(path: Path | None = None) -> RuleBook:
    """Read and validate a rules file; raise ConfigError naming the file and the bad fields."""
    path = path or SHIPPED_RULES
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read intent rules {path}: {exc}") from exc
    try:
        return RuleBook.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid intent rules {path}: {describe_validation_error(exc)}") from exc
