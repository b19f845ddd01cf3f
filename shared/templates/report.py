"""The SMS report: every SMS template rendered with its sample data, its encoding and segments.

Logged when the sms service starts (a WARNING for each template over `max_sms_segments`) and
printed by `python -m shared.templates [--max-segments N]`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from jinja2 import TemplateError

from shared.templates.catalog import catalog
from shared.templates.rendering import check_templates, render, sample
from shared.templates.sms import SmsLength, sms_segments


@dataclass(frozen=True)
class SmsReportLine:
    """One SMS template in one locale: its length, and whether it is over the maximum."""

    template: str
    locale: str
    category: str
    length: SmsLength | None  # None: the sample did not render
    over: bool
    problem: str | None = None

    def describe(self) -> str:
        """The line without its `WARNING` mark (a logger gives the level)."""
        s = self.length
        if s is None:
            return f"sms {self.template} {self.locale}: not measured: {self.problem}"
        line = (
            f"sms {self.template} {self.locale} ({self.category}): {s.encoding}, "
            f"{s.chars} chars, {s.segments} segment{'s' if s.segments != 1 else ''}"
        )
        return f"{line}: over the maximum" if self.over else line

    def __str__(self) -> str:
        return f"WARNING {self.describe()}" if self.over else self.describe()


def sms_report(max_sms_segments: int) -> list[SmsReportLine]:
    """Every template × locale rendered for sms with its sample data and category."""
    check_templates()
    cat = catalog()
    lines = []
    for locale in cat.locales:
        for name in sorted(cat.templates[locale]):
            category, data = sample(name)
            try:
                body = render(name, locale, data, "sms", category=category).body
            except TemplateError as exc:  # config.yaml's sample lacks a variable, ...
                lines.append(SmsReportLine(name, locale, category, None, True, str(exc)))
                continue
            length = sms_segments(body)
            lines.append(
                SmsReportLine(name, locale, category, length, length.segments > max_sms_segments)
            )
    return lines


def template_report(max_sms_segments: int) -> list[str]:
    """A line per SMS template (encoding, chars, segments), `WARNING …` over the maximum."""
    return [str(line) for line in sms_report(max_sms_segments)]


def log_template_report(logger: logging.Logger, max_sms_segments: int) -> None:
    """Log the report: INFO per template, WARNING for those over `max_sms_segments`."""
    for line in sms_report(max_sms_segments):
        if line.length is None:
            logger.warning("%s", line.describe())
        elif line.over:
            logger.warning("%s (max %d)", line.describe(), max_sms_segments)
        else:
            logger.info("%s", line.describe())
