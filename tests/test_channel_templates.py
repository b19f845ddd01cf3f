"""Default message templates: every type in both locales, fallbacks, missing variables."""

from __future__ import annotations

import pytest

from shared.templates import TEMPLATES, Message, render, resolve_locale

DATA = {
    "loan_id": "L-2024-001",
    "amount_due": "1,250.00",
    "amount": "50,000",
    "currency": "CNY",
    "due_date": "2026-12-01",
    "code": "482913",
}
TYPES = ["repayment_due", "overdue_notice", "loan_approved", "verification_callback", "otp"]


@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_every_type_renders_in_both_locales(type_: str, locale: str) -> None:
    message = render(type_, locale, DATA, "sms")
    assert message.subject and message.body
    assert "{{" not in message.body and "None" not in message.body
    if type_ != "otp":
        assert "L-2024-001" in message.body
    chinese = any("\u4e00" <= ch <= "\u9fff" for ch in message.body)
    assert chinese == (locale == "zh-CN")


def test_repayment_due_in_english() -> None:
    assert render("repayment_due", "en-US", DATA, "email") == Message(
        subject="Repayment due on 2026-12-01",
        body="Your repayment of 1,250.00 CNY for loan L-2024-001 is due on 2026-12-01.",
    )


def test_otp_is_spelled_out_on_voice() -> None:
    assert "482913" in render("otp", "en-US", DATA, "sms").body
    assert "4 8 2 9 1 3" in render("otp", "en-US", DATA, "voice").body


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("zh-CN", "zh-CN"),
        ("zh-TW", "zh-CN"),
        ("zh", "zh-CN"),
        ("en-GB", "en-US"),
        ("fr-FR", "en-US"),
        (None, "en-US"),
        ("", "en-US"),
    ],
)
def test_locale_fallback(locale: str | None, expected: str) -> None:
    assert resolve_locale(locale) == expected


def test_missing_variables_render_empty() -> None:
    message = render("repayment_due", "en-US", {}, "sms")
    assert message.body == "Your repayment of   for loan  is due on ."


def test_unknown_type_uses_the_generic_template() -> None:
    assert render("birthday", "zh-CN", {}, "push").subject == TEMPLATES["generic"]["zh-CN"][0]
    assert render("birthday", "en-US", {"text": "Hello"}, "push").body == "Hello"


def test_data_is_not_evaluated_as_a_template() -> None:
    body = render("generic", "en-US", {"text": "{{ 7 * 7 }} {% raw %}"}, "sms").body
    assert body == "{{ 7 * 7 }} {% raw %}"
