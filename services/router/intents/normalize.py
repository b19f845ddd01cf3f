"""Text normalisation: the same folding for the rules and for the messages they match.

`fold` makes width, case and spacing irrelevant (NFKC turns full-width `ＳＴＯＰ` and `５` into
`stop` and `5`); `trim_edges` drops the punctuation, symbols (emoji) and spaces around a
message, for the whole-message keywords; `Variants` rewrites common typos and variants
(`换款` → `还款`, `cant` → `cannot`) to one canonical spelling before the intent rules run.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

_SPACE = re.compile(r"\s+")
# Typographic quotes and dashes NFKC keeps: the rules are written with the ASCII ones.
_PUNCT = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2014": "-"})
_ASCII_WORD = re.compile(r"[a-z0-9]")


def fold(text: str) -> str:
    """NFKC, case folding, ASCII quotes, whitespace collapsed to one space and stripped."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_PUNCT)
    return _SPACE.sub(" ", text).strip()


def _is_edge(ch: str) -> bool:
    # Punctuation (P*), symbols and emoji (S*), separators (Z*), controls and the like (C*).
    return unicodedata.category(ch)[0] in "PSZC"


def trim_edges(text: str) -> str:
    """Drop punctuation, symbols, emoji and spaces at both ends (`【退订】` → `退订`)."""
    start, end = 0, len(text)
    while start < end and _is_edge(text[start]):
        start += 1
    while end > start and _is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def whole(text: str) -> str:
    """The form whole-message keywords and feedback scores are compared in."""
    return trim_edges(fold(text)).strip()


def _end(last: str) -> str:
    return r"(?![a-z0-9])" if _ASCII_WORD.match(last) else ""


def literal_union(literals: Iterable[str]) -> str:
    """One regex finding any of the folded literals. An ASCII letter or digit at either end of
    a literal must not continue into more ASCII letters or digits (`end` is not found in
    `spend`, `pay` is found in `我的pay款`). Written as a trie (`还款(?:日|方式)`), so the engine
    tries one branch per position instead of every literal: a long message costs time linear
    in its length, not length × literals. At a position, the longest literal that matches is
    the one found."""
    trie: dict[str, Any] = {}
    for word in set(literals):
        if not word:
            continue
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any], last: str) -> str:
        alts = [re.escape(ch) + build(node[ch], ch) for ch in sorted(k for k in node if k)]
        if "" in node:
            alts.append(_end(last))  # after the longer continuations: longest first
        if len(alts) == 1:
            return alts[0]
        return "(?:" + "|".join(alts) + ")"

    ascii_start = {k: v for k, v in trie.items() if _ASCII_WORD.match(k)}
    other_start = {k: v for k, v in trie.items() if not _ASCII_WORD.match(k)}
    parts = []
    if ascii_start:
        parts.append(r"(?<![a-z0-9])" + build(ascii_start, ""))
    if other_start:
        parts.append(build(other_start, ""))
    return "|".join(parts)


class Variants:
    """Rewrites each variant to its canonical spelling in one pass, longest variant first."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._canonical = {fold(k): fold(v) for k, v in mapping.items() if fold(k)}
        self._regex = re.compile(literal_union(self._canonical)) if self._canonical else None

    def apply(self, text: str) -> str:
        if self._regex is None:
            return text
        return self._regex.sub(lambda m: self._canonical[m.group(0)], text)


def normalize(text: str, variants: Variants | None = None) -> str:
    """The form intent rules are matched against: folded, then variants made canonical."""
    folded = fold(text)
    return variants.apply(folded) if variants else folded
