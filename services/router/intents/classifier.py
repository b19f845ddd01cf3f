"""Classify a borrower's inquiry into an intent and a tier (the contract's table).

Order of decisions, first match wins:

1. the whole trimmed message is an opt-out / opt-in keyword → `opt_out` (scope `this` or `all`)
   or `opt_in`, no tier;
2. the whole message is a score 1–5 → `feedback` with `score`, no tier (a *candidate*: the
   router decides whether a survey is pending; if none is, it treats the message as `other`);
3. an empty message on `voice` (a missed inbound call) → `callback_request`;
4. the intent rules, in precedence order: every `urgent` intent before every `high` one before
   every `normal` one, and within a tier the order of the rules file;
5. nothing matched → `other` (tier `normal`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal

from services.router.intents.normalize import Variants, fold, literal_union, normalize, whole
from services.router.intents.rules import OTHER, TIERS, IntentRule, RuleBook, Tier, load_rules

Scope = Literal["this", "all"]

RESPOND_BY: dict[Tier, timedelta] = {
    "urgent": timedelta(minutes=15),
    "high": timedelta(hours=2),
    "normal": timedelta(hours=24),
}


def respond_by_delta(tier: Tier) -> timedelta:
    """The SLA of a tier: `respond_by` is the inquiry's `received_at` plus this."""
    return RESPOND_BY[tier]


@dataclass(frozen=True, slots=True)
class Classification:
    intent: str
    tier: Tier | None  # None for opt_out, opt_in and feedback
    score: int | None = None  # feedback only: 1–5
    scope: Scope | None = None  # opt_out only: the channel it arrived on, or every channel
    matched: str | None = None  # the rule that decided, e.g. "fraud: keyword 'lost my phone'"


@dataclass(frozen=True, slots=True)
class _Matcher:
    intent: str
    tier: Tier
    keywords: re.Pattern[str] | None
    patterns: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]

    def match(self, text: str) -> str | None:
        if any(p.search(text) for p in self.exclude):
            return None
        if self.keywords is not None and (m := self.keywords.search(text)):
            return f"{self.intent}: keyword {m.group(0)!r}"
        for p in self.patterns:
            if p.search(text):
                return f"{self.intent}: pattern {p.pattern!r}"
        return None


class Classifier:
    """Built from validated rules; `classify` is pure and cheap (compiled regexes only)."""

    def __init__(self, rules: RuleBook) -> None:
        self.rules = rules
        self._variants = Variants(rules.variants)
        kw = rules.keywords
        self._whole: dict[str, tuple[str, Scope | None]] = {}
        for word in kw.opt_out:
            self._whole[whole(word)] = ("opt_out", "this")
        for word in kw.opt_out_all:
            self._whole[whole(word)] = ("opt_out", "all")
        for word in kw.opt_in:
            self._whole[whole(word)] = ("opt_in", None)
        fb = rules.feedback
        self._scores = {whole(k): v for k, v in fb.scores.items()}
        # fullmatch anchors both ends: `5stars` is a score, `55` is not
        scores = "|".join(re.escape(k) for k in sorted(self._scores, key=len, reverse=True))
        suffixes = "|".join(re.escape(fold(s)) for s in sorted(fb.suffixes, key=len, reverse=True))
        self._feedback = re.compile(
            rf"(?P<score>{scores})(?:\s*(?:{suffixes}))?" if suffixes else rf"(?P<score>{scores})"
        )
        order = {name: i for i, name in enumerate(rules.intents)}
        ranked = sorted(
            rules.intents.items(), key=lambda kv: (TIERS.index(kv[1].tier), order[kv[0]])
        )
        self._matchers = tuple(self._matcher(name, rule) for name, rule in ranked)

    @classmethod
    def from_file(cls, path: Path | None = None) -> Classifier:
        """Load and validate a rules file (None: the shipped one); ConfigError if it is bad."""
        return cls(load_rules(path))

    def _canon(self, text: str) -> str:
        return normalize(text, self._variants)

    def _matcher(self, name: str, rule: IntentRule) -> _Matcher:
        words = {self._canon(w) for ws in rule.keywords.values() for w in ws}
        words.discard("")
        return _Matcher(
            intent=name,
            tier=rule.tier,
            keywords=re.compile(literal_union(words)) if words else None,
            patterns=tuple(
                re.compile(p, re.IGNORECASE) for ps in rule.patterns.values() for p in ps
            ),
            exclude=tuple(re.compile(p, re.IGNORECASE) for ps in rule.exclude.values() for p in ps),
        )

    def classify(self, text: str, channel: str) -> Classification:
        """The intent and tier of one inbound message that arrived on `channel`."""
        bare = whole(text)
        hit = self._whole.get(bare)
        if hit is not None:
            intent, scope = hit
            return Classification(intent, None, scope=scope, matched=f"keyword {bare!r}")
        if m := self._feedback.fullmatch(bare):
            score = self._scores[m.group("score")]
            return Classification("feedback", None, score=score, matched=f"score {bare!r}")
        folded = fold(text[: self.rules.max_chars])
        if not folded:
            if channel == "voice":
                return Classification("callback_request", "high", matched="missed call")
            return Classification(OTHER, "normal", matched="empty message")
        return next(self._rule_matches(folded), Classification(OTHER, "normal"))

    def candidates(self, text: str) -> list[Classification]:
        """Every intent rule the message matches, in precedence order (the first is what
        `classify` returns unless a whole-message keyword, a score or a missed call decides).
        For debugging rules: which other intents a message would have been."""
        return list(self._rule_matches(fold(text[: self.rules.max_chars])))

    def _rule_matches(self, folded: str) -> Iterator[Classification]:
        canon = self._variants.apply(folded)
        for matcher in self._matchers:
            if (why := matcher.match(canon)) is not None:
                yield Classification(matcher.intent, matcher.tier, matched=why)
