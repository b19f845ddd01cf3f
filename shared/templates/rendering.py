"""Rendering: the sandboxed Jinja2 environments, their filters, and the variables a template needs.

Every variable a template uses is required unless the template guards it (`{% if x is
defined %}`, `x is defined`, `x | default(...)`). A required variable missing from the data
raises MissingVariable naming it; nothing is ever rendered with a hole in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache, partial
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal
from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateRuntimeError,
    TemplateSyntaxError,
    UndefinedError,
    nodes,
    pass_context,
)
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing
from markupsafe import Markup, escape

from shared.errors import ConfigError
from shared.templates.catalog import GENERIC, Catalog, Formats, TemplateSet, catalog

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


class MissingVariable(UndefinedError):
    """A template needs a variable the data does not have."""

    def __init__(self, variable: str, where: str = "") -> None:
        self.variable = variable
        self.where = where
        super().__init__(f"missing variable '{variable}'" + (f" ({where})" if where else ""))


class TemplateValueError(TemplateError):
    """A variable is present but cannot be formatted (an amount that is not a number, ...)."""


class _Undefined(StrictUndefined):
    """StrictUndefined raising MissingVariable with the variable's (or attribute's) name."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
    ) -> None:
        super().__init__(hint, obj, name, exc)
        if exc is UndefinedError:  # the sandbox's refusals stay SecurityError
            variable = name if name is not None else (hint or "unknown")
            self._undefined_exception = partial(_missing, variable)  # type: ignore[assignment]


def _missing(variable: str, _message: str) -> MissingVariable:
    return MissingVariable(variable)


def _formats(ctx: Context) -> Formats:
    return catalog().config.formats[ctx["locale"]]


def _babel_locale(ctx: Context) -> Locale:
    return _parsed_locale(str(ctx["locale"]))


@cache
def _parsed_locale(locale: str) -> Locale:
    return Locale.parse(locale, sep="-")  # parsing costs more than the formatting itself


@pass_context
def money(ctx: Context, value: object, currency: object) -> str:
    """`1280.5 | money('CNY')` → 'CNY 1,280.50' (en-US) or '1,280.50元' (zh-CN)."""
    try:
        amount = Decimal(str(value).replace(",", "").strip())
    except InvalidOperation:
        raise TemplateValueError(f"amount {value!r} is not a number") from None
    code = str(currency).strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise TemplateValueError(f"currency {currency!r} is not an ISO 4217 code")
    fmt, locale = _formats(ctx), _babel_locale(ctx)
    if fmt.money == "code":
        return format_currency(amount, code, locale=locale, format="¤¤ #,##0.00")
    if code in fmt.money_names:
        return format_decimal(amount, format="#,##0.00", locale=locale) + fmt.money_names[code]
    return format_currency(amount, code, locale=locale, format_type="name")


def _as_date(value: object) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise TemplateValueError(f"date {value!r} is not an ISO 8601 date") from None


@pass_context
def date_filter(ctx: Context, value: object) -> str:
    """`'2026-12-01' | date` → 'December 1, 2026' (en-US) or '2026年12月1日' (zh-CN)."""
    day = value.date() if isinstance(value, datetime) else _as_date(value)
    return format_date(day, _formats(ctx).date, locale=_babel_locale(ctx))


@pass_context
def datetime_filter(ctx: Context, value: object) -> str:
    """An RFC 3339 timestamp in the zone of the optional `timezone` variable, else its own."""
    try:
        at = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        raise TemplateValueError(f"timestamp {value!r} is not RFC 3339") from None
    zone = ctx.get("timezone")
    if isinstance(zone, str) and at.tzinfo is not None:
        try:
            at = at.astimezone(ZoneInfo(zone))
        except (ZoneInfoNotFoundError, ValueError):
            raise TemplateValueError(f"time zone {zone!r} is unknown") from None
    return format_datetime(at, _formats(ctx).datetime, tzinfo=at.tzinfo, locale=_babel_locale(ctx))


def spell(value: object) -> str:
    """'604213' → '6 0 4 2 1 3': a code read out digit by digit."""
    return " ".join(str(value).replace(" ", ""))


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        autoescape=autoescape,
        undefined=_Undefined,
        trim_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(money=money, date=date_filter, datetime=datetime_filter, spell=spell)
    return env


@cache
def text_environment() -> ImmutableSandboxedEnvironment:
    """The environment of plain-text parts (SMS, email text, push, voice): no escaping."""
    return _environment(autoescape=False)


@cache
def html_environment() -> ImmutableSandboxedEnvironment:
    """The environment of HTML email parts: every value is escaped."""
    return _environment(autoescape=True)


@cache
def _compile(source: str, html: bool) -> Template:
    return (html_environment() if html else text_environment()).from_string(source)


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
    subject = _compile(parts.subject, False).render(context).strip()
    body = _compile(parts.body, False).render(context).strip()
    footer = ""
    rule = cat.config.footers.get(channel)  # type: ignore[call-overload]
    if rule is not None and category in rule.categories:
        footer = _compile(rule.text[loc], False).render(context).rstrip()
    if channel == "sms":
        signature = _compile(cat.config.sms_signature[loc], False).render(context)
        return Message(subject=subject, body=signature + body + footer)
    if channel != "email":
        return Message(subject=subject, body=body)
    layout = cat.config.email_layout[loc]
    text = _compile(layout.text, False).render({**context, "content": body, "footer": footer})
    if parts.html is not None:
        content = Markup(_compile(parts.html, True).render(context))
    else:
        content = _paragraphs(body)
    html = _compile(layout.html, True).render(
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
        needed |= _required(source, html)
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


@cache
def _required(source: str, html: bool) -> frozenset[str]:
    env = html_environment() if html else text_environment()
    tree = env.parse(source)
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return frozenset(set(_used(tree, frozenset())) - assigned)


def _defined_by(test: nodes.Node) -> set[str]:
    """The names a condition proves defined: `x is defined`, `a is defined and b is defined`."""
    if (
        isinstance(test, nodes.Test)
        and test.name == "defined"
        and isinstance(test.node, nodes.Name)
    ):
        return {test.node.name}
    if isinstance(test, nodes.And):
        return _defined_by(test.left) | _defined_by(test.right)
    return set()


def _used(node: nodes.Node, guarded: frozenset[str]) -> Iterator[str]:
    """The names `node` reads that no enclosing `defined` test or `default` filter guards."""
    if isinstance(node, nodes.Name):
        if node.ctx == "load" and node.name not in guarded:
            yield node.name
        return
    if isinstance(node, (nodes.Filter, nodes.Test)) and node.name in ("default", "d", "defined"):
        if isinstance(node.node, nodes.Name):  # the guarded name itself; its arguments are not
            for arg in [*node.args, *(kw.value for kw in node.kwargs)]:
                yield from _used(arg, guarded)
            return
    if isinstance(node, nodes.If):
        yield from _used(node.test, guarded)
        for inner in node.body:
            yield from _used(inner, guarded | _defined_by(node.test))
        for other in [*node.elif_, *node.else_]:
            yield from _used(other, guarded)
        return
    if isinstance(node, nodes.And):  # `x is defined and x > 0`: the right side is guarded
        yield from _used(node.left, guarded)
        yield from _used(node.right, guarded | _defined_by(node.left))
        return
    if isinstance(node, nodes.CondExpr):
        yield from _used(node.test, guarded)
        yield from _used(node.expr1, guarded | _defined_by(node.test))
        if node.expr2 is not None:
            yield from _used(node.expr2, guarded)
        return
    for child in node.iter_child_nodes():
        yield from _used(child, guarded)


def check_templates() -> None:
    """Load and compile every template of every locale and channel; ConfigError names the
    first that is invalid (at start-up rather than at the first send)."""
    cat = catalog()
    for locale in cat.locales:
        for name in cat.templates[locale]:
            for channel in CHANNELS:
                for source, html in _sources(cat, name, locale, channel):
                    try:
                        _required(source, html)
                        _compile(source, html)
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
