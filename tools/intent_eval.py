"""Evaluate the inquiry classifier on a labelled corpus.

    python -m tools.intent_eval [--corpus PATH] [--rules PATH] [--width N]

Prints per-intent precision, recall and support, the overall intent accuracy, the tier
accuracy, how many `urgent` messages were classified below `high` (as `normal` or no tier),
and every misclassified example (text truncated, phone numbers and emails masked). Exit
status: 0 when the tier accuracy is at least 95% and no urgent message fell below high,
1 otherwise, 2 when the rules or the corpus cannot be read.

The corpus is JSON Lines, one labelled message per line: `text`, `locale`, `intent`, `tier`
(null for opt_out, opt_in and feedback), optional `channel` (default `sms`), `score`
(feedback) and `scope` (opt_out: `this` or `all`). The tests run the same `evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.router.intents import TIERS, Classification, Classifier, Tier
from shared.errors import ConfigError
from shared.masking import scrub

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT / "tests" / "data" / "inquiries_corpus.jsonl"
MIN_TIER_ACCURACY = 0.95
CHANNELS = ("sms", "email", "push", "voice")


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    locale: str
    intent: str
    tier: Tier | None
    channel: str = "sms"
    score: int | None = None
    scope: str | None = None
    line: int = 0


def _example(obj: object, line: int) -> Example:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    for key in ("text", "locale", "intent"):
        if not isinstance(obj.get(key), str):
            raise ValueError(f"{key}: a string is required")
    tier = obj.get("tier")
    if tier is not None and tier not in TIERS:
        raise ValueError(f"tier: {tier!r} is not one of {', '.join(TIERS)} or null")
    channel = obj.get("channel", "sms")
    if channel not in CHANNELS:
        raise ValueError(f"channel: {channel!r} is not one of {', '.join(CHANNELS)}")
    score, scope = obj.get("score"), obj.get("scope")
    if score is not None and not (isinstance(score, int) and 1 <= score <= 5):
        raise ValueError("score: an integer 1-5 is required")
    if scope is not None and scope not in ("this", "all"):
        raise ValueError("scope: 'this' or 'all' is required")
    unknown = set(obj) - {"text", "locale", "intent", "tier", "channel", "score", "scope"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    return Example(obj["text"], obj["locale"], obj["intent"], tier, channel, score, scope, line)


def load_corpus(path: Path) -> list[Example]:
    """Read a JSON Lines corpus; ConfigError naming the file and line of a bad entry."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read corpus {path}: {exc}") from exc
    out = []
    for n, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            out.append(_example(json.loads(raw), n))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise ConfigError(f"invalid corpus {path} line {n}: {exc}") from exc
    if not out:
        raise ConfigError(f"corpus {path} has no examples")
    return out


def _correct(ex: Example, got: Classification) -> bool:
    return (
        got.intent == ex.intent
        and (ex.score is None or got.score == ex.score)
        and (ex.scope is None or got.scope == ex.scope)
    )


def _rank(tier: Tier | None) -> int:
    return TIERS.index(tier) if tier is not None else len(TIERS)


@dataclass(frozen=True, slots=True)
class IntentStats:
    support: int  # labelled with the intent
    predicted: int  # classified as the intent
    correct: int

    @property
    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.correct / self.support if self.support else 0.0


@dataclass(frozen=True, slots=True)
class Miss:
    example: Example
    got: Classification


@dataclass(frozen=True)
class Report:
    total: int
    intent_correct: int
    tier_correct: int
    per_intent: dict[str, IntentStats]
    misses: list[Miss] = field(default_factory=list)
    urgent_below_high: list[Miss] = field(default_factory=list)

    @property
    def intent_accuracy(self) -> float:
        return self.intent_correct / self.total if self.total else 0.0

    @property
    def tier_accuracy(self) -> float:
        return self.tier_correct / self.total if self.total else 0.0

    def passed(self, min_tier_accuracy: float = MIN_TIER_ACCURACY) -> bool:
        return self.tier_accuracy >= min_tier_accuracy and not self.urgent_below_high


def evaluate(classifier: Classifier, examples: Iterable[Example]) -> Report:
    """Classify every example and compare with its labels."""
    total = intent_ok = tier_ok = 0
    support: dict[str, int] = {}
    predicted: dict[str, int] = {}
    correct: dict[str, int] = {}
    misses: list[Miss] = []
    below: list[Miss] = []
    for ex in examples:
        got = classifier.classify(ex.text, ex.channel)
        total += 1
        support[ex.intent] = support.get(ex.intent, 0) + 1
        predicted[got.intent] = predicted.get(got.intent, 0) + 1
        ok = _correct(ex, got)
        if ok:
            intent_ok += 1
            correct[ex.intent] = correct.get(ex.intent, 0) + 1
        if got.tier == ex.tier:
            tier_ok += 1
        if not ok or got.tier != ex.tier:
            misses.append(Miss(ex, got))
        if ex.tier == "urgent" and _rank(got.tier) > _rank("high"):
            below.append(Miss(ex, got))
    per_intent = {
        name: IntentStats(support.get(name, 0), predicted.get(name, 0), correct.get(name, 0))
        for name in sorted(set(support) | set(predicted))
    }
    return Report(total, intent_ok, tier_ok, per_intent, misses, below)


def _short(text: str, width: int) -> str:
    """One line, phone numbers and emails masked, at most `width` characters."""
    flat = scrub(" ".join(text.split())) or "(empty)"
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def format_report(report: Report, width: int = 60) -> str:
    lines = [f"{'intent':<22}{'precision':>10}{'recall':>8}{'support':>9}"]
    for name, s in report.per_intent.items():
        lines.append(f"{name:<22}{s.precision:>10.1%}{s.recall:>8.1%}{s.support:>9}")
    lines += [
        "",
        f"examples            {report.total}",
        f"intent accuracy     {report.intent_accuracy:.1%} ({report.intent_correct})",
        f"tier accuracy       {report.tier_accuracy:.1%} ({report.tier_correct}),"
        f" required {MIN_TIER_ACCURACY:.0%}",
        f"urgent below high   {len(report.urgent_below_high)}",
    ]
    if report.misses:
        lines += ["", f"misclassified ({len(report.misses)}):"]
        for m in report.misses:
            ex, got = m.example, m.got
            lines.append(
                f"  line {ex.line:>4} {ex.intent}/{ex.tier or '-'} → {got.intent}/{got.tier or '-'}"
                f"  {_short(ex.text, width)!r}  [{got.matched or 'no rule'}]"
            )
    lines += ["", "PASS" if report.passed() else "FAIL"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.intent_eval", description=__doc__)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="JSON Lines corpus")
    parser.add_argument("--rules", type=Path, default=None, help="rules file (default: shipped)")
    parser.add_argument("--width", type=int, default=60, help="truncate texts to this width")
    args = parser.parse_args(argv)
    try:
        classifier = Classifier.from_file(args.rules)
        examples = load_corpus(args.corpus)
    except ConfigError as exc:
        print(f"intent_eval: {exc}", file=sys.stderr)
        return 2
    report = evaluate(classifier, examples)
    print(format_report(report, args.width))
    return 0 if report.passed() else 1


if __name__ == "__main__":
    sys.exit(main())
