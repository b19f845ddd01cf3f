"""The filters templates format values with, in the locale being rendered (Babel):
`money(currency)`, `date`, `datetime` and `spell`."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.numbers import format_currency, format_decimal
from jinja2 import TemplateError, pass_context
from jinja2.runtime import Context

from shared.templates.catalog import Formats, catalog


class TemplateValueError(TemplateError):
    """A variable is present but cannot be formatted (an amount that is not a number, ...)."""


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


FILTERS = {"money": money, "date": date_filter, "datetime": datetime_filter, "spell": spell}
