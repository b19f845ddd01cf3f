"""Rendering: render() a template for a channel and locale, and the variables it requires.

Every variable a template uses is required unless the template guards it (`{% if x is
defined %}`, `x is defined`, `x | default(...)`). A required variable missing from the data
raises MissingVariable naming it; nothing is ever rendered with a hole in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError
from markupsafe import Markup, escape

from shared.errors import ConfigError
from shared.templates.catalog import GENERIC, Catalog, TemplateSet, catalog
from shared.templates.environment import (
    MissingVariable,
    compile_source,
    html_environment,
    text_environment,
)
from shared.templates.filters import TemplateValueError
from shared.templates.variables import required_names

# Names render() provides itself: never required from the data.
PROVIDED = frozenset({"brand", "channel", "category", "locale"})
CHANNELS = ("sms", "email", "push", "voice")


@dataclass(frozen=True)
class Message:
    """The rendered content of one attempt: a subject (the email subject, the push title; the
    email subject on sms and voice, for providers that want one), a body (the SMS text, the
    email's plain text, the push body, the voice script) and, for email, the HTML part."""

    subject: str
    body: str
    html: str | None = None


# --- which parts a channel renders --------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    subject: str
    body: str
    html: str | None = None


def _parts(template: TemplateSet, channel: str) -> _Parts:
    """The sources of a channel's subject, body and HTML (push and voice fall back to sms)."""
    if channel == "email":
        return _Parts(template.email.subject, template.email.text, template.email.html)
    if channel == "push":
        if template.push is not None:
            return _Parts(template.push.title, template.push.body)
        return _Parts(template.email.subject, template.sms)
    body = template.voice if channel == "voice" and template.voice is not None else template.sms
    return _Parts(template.email.subject, body)


def _sources(cat: Catalog, name: str, locale: str, channel: str) -> list[tuple[str, bool]]:
    """Every source rendered for one message, with whether it is HTML."""
    parts = _parts(cat.get(name, locale), channel)
    sources = [(parts.subject, False), (parts.body, False)]
    if parts.html is not None:
        sources.append((parts.html, True))
    if channel == "sms":
        sources.append((cat.config.sms_signature[locale], False))
    for ch, footer in cat.config.footers.items():
        if ch == channel:
            sources.append((footer.text[locale], False))
    if channel == "email":
        layout = cat.config.email_layout[locale]
        sources += [(layout.text, False), (layout.html, True)]
    return sources


# --- render -----------------------------------------------------------------------------


def resolve_locale(locale: str | None) -> str:
    """The template locale for `locale`: exact, else the same language, else en-US."""
    return catalog().resolve_locale(locale)


def render(
    template: str,
    locale: str | None,
    data: Mapping[str, Any],
    channel: str,
    category: str | None = None,
) -> Message:
    """Render `template` (a type or message name; unknown: generic) for `channel` in `locale`.

    `category` (the dispatch's) adds the opt-out footer where config.yaml asks for one.
    Raises MissingVariable naming a required variable absent from `data`, and
    TemplateValueError for a value that cannot be formatted.
    """
    cat = catalog()
    loc = cat.resolve_locale(locale)
    name = cat.resolve_name(template)
    try:
        return _render(cat, name, loc, data, channel, category)
    except MissingVariable as exc:
        raise MissingVariable(exc.variable, f"template {name}, {channel}, {loc}") from None


def _render(
    cat: Catalog,
    name: str,
    loc: str,
    data: Mapping[str, Any],
    channel: str,
    category: str | None,
) -> Message:
    context: dict[str, Any] = {
        **_present(data),
        "channel": channel,
        "category": category,
        "locale": loc,
        "brand": cat.config.brand[loc],
    }
    parts = _parts(cat.get(name, loc), channel)
    subject = compile_source(parts.subject, False).render(context).strip()
    body = compile_source(parts.body, False).render(context).strip()
    footer = ""
    rule = cat.config.footers.get(channel)  # type: ignore[call-overload]
    if rule is not None and category in rule.categories:
        footer = compile_source(rule.text[loc], False).render(context).rstrip()
    if channel == "sms":
        signature = compile_source(cat.config.sms_signature[loc], False).render(context)
        return Message(subject=subject, body=signature + body + footer)
    if channel != "email":
        return Message(subject=subject, body=body)
    layout = cat.config.email_layout[loc]
    text = compile_source(layout.text, False).render({**context, "content": body, "footer": footer})
    if parts.html is not None:
        content = Markup(compile_source(parts.html, True).render(context))
    else:
        content = _paragraphs(body)
    html = compile_source(layout.html, True).render(
        {**context, "content": content, "footer": footer, "subject": subject}
    )
    return Message(subject=subject, body=_tidy(text), html=html.strip())


def _paragraphs(text: str) -> Markup:
    """Plain text as HTML: escaped, blank lines → paragraphs, line breaks → <br>."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return Markup("\n").join(
        Markup("<p>{}</p>").format(Markup("<br>\n").join(escape(line) for line in p.splitlines()))
        for p in paragraphs
    )


def _tidy(text: str) -> str:
    """No trailing spaces, at most one blank line in a row, no blank line at either end."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


# --- required variables -----------------------------------------------------------------


def required_variables(template: str, channel: str, locale: str | None) -> set[str]:
    """The variables `template` needs from the data on `channel` in `locale` (the footers of
    every category included): those it uses outside a `defined` test or `default` filter."""
    cat = catalog()
    loc = cat.resolve_locale(locale)
    name = cat.resolve_name(template)
    needed: set[str] = set()
    for source, html in _sources(cat, name, loc, channel):
        needed |= required_names(source, html)
    return needed - PROVIDED - {"content", "footer", "subject"}


def missing_variables(
    template: str, channels: Iterable[str], locale: str | None, data: Mapping[str, Any]
) -> list[str]:
    """The required variables of `template` on any of `channels` that `data` lacks, sorted;
    [] when the message renders on every one of them."""
    needed: set[str] = set()
    for channel in channels:
        needed |= required_variables(template, channel, locale)
    return sorted(needed - set(_present(data)))


def _present(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data without its null values: a null is as absent as a missing key."""
    return {k: v for k, v in data.items() if v is not None}


def check_templates() -> None:
    """Load and compile every template of every locale and channel; ConfigError names the
    first that is invalid (at start-up rather than at the first send)."""
    cat = catalog()
    for locale in cat.locales:
        for name in cat.templates[locale]:
            for channel in CHANNELS:
                for source, html in _sources(cat, name, locale, channel):
                    try:
                        required_names(source, html)
                        compile_source(source, html)
                    except TemplateSyntaxError as exc:
                        where = f"{locale}.yaml or config.yaml: {name} ({channel})"
                        raise ConfigError(f"{where}: line {exc.lineno}: {exc.message}") from None


def sample(template: str) -> tuple[str, dict[str, Any]]:
    """The category and representative data config.yaml gives `template` (for reports, tests)."""
    found = catalog().config.samples.get(template)
    return (found.category, dict(found.data)) if found else ("transactional", {})


__all__ = [
    "CHANNELS",
    "GENERIC",
    "Message",
    "MissingVariable",
    "TemplateValueError",
    "check_templates",
    "html_environment",
    "missing_variables",
    "render",
    "required_variables",
    "resolve_locale",
    "sample",
    "text_environment",
]
