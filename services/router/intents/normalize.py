"""Text normalisation: the same folding for the rules and for the messages they match.

`fold` makes width, case and spacing irrelevant (NFKC turns full-width `ＳＴＯＰ` and `５` into
`stop` and `5`); `trim_edges` drops the punctuation, symbols (emoji) and spaces around a
message, for the whole-message keywords; `Variants` rewrites common typos and variants
(`换款` → `还款`, `cant` → `cannot`) to one canonical spelling before the intent rules run.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping

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


def bounded(literal: str) -> str:
    """A regex for a folded literal; an ASCII word at either end must not continue into more
    ASCII letters or digits (`end` is not found in `spend`, `pay` is found in `我的pay款`)."""
    body = re.escape(literal)
    if _ASCII_WORD.match(literal[:1]):
        body = r"(?<![a-z0-9])" + body
    if _ASCII_WORD.match(literal[-1:]):
        body += r"(?![a-z0-9])"
    return body


class Variants:
    """Rewrites each variant to its canonical spelling in one pass, longest variant first."""

    def __init__(self, mapping: Mapping[str, str]) -> None:
        self._canonical = {fold(k): fold(v) for k, v in mapping.items() if fold(k)}
        keys = sorted(self._canonical, key=len, reverse=True)
        self._regex = re.compile("|".join(bounded(k) for k in keys)) if keys else None

    def apply(self, text: str) -> str:
        if self._regex is None:
            return text
        return self._regex.sub(lambda m: self._canonical[m.group(0)], text)


def normalize(text: str, variants: Variants | None = None) -> str:
    """The form intent rules are matched against: folded, then variants made canonical."""
    folded = fold(text)
    return variants.apply(folded) if variants else folded
