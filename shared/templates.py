"""Default message templates: a subject and a body per notification type and locale.

Templates are Jinja2 in a sandboxed environment; a variable missing from the dispatch's
`data` renders empty. Locales other than en-US and zh-CN fall back by language (`zh-TW` →
zh-CN), then to en-US; unknown types use the generic template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from jinja2 import Template, Undefined
from jinja2.sandbox import SandboxedEnvironment

DEFAULT_LOCALE = "en-US"
GENERIC = "generic"

_OTP_CODE = "{% if channel == 'voice' %}{{ code|string|join(' ') }}{% else %}{{ code }}{% endif %}"

# type → locale → (subject, body)
TEMPLATES: dict[str, dict[str, tuple[str, str]]] = {
    "repayment_due": {
        "en-US": (
            "Repayment due on {{ due_date }}",
            "Your repayment of {{ amount_due }} {{ currency }} for loan {{ loan_id }} "
            "is due on {{ due_date }}.",
        ),
        "zh-CN": (
            "还款提醒：{{ due_date }} 到期",
            "您的贷款 {{ loan_id }} 本期应还 {{ amount_due }} {{ currency }}，"
            "到期日为 {{ due_date }}，请按时还款。",
        ),
    },
    "overdue_notice": {
        "en-US": (
            "Your repayment is overdue",
            "Your repayment of {{ amount_due }} {{ currency }} for loan {{ loan_id }} was due "
            "on {{ due_date }} and is overdue. Please pay as soon as possible.",
        ),
        "zh-CN": (
            "逾期还款通知",
            "您的贷款 {{ loan_id }} 应于 {{ due_date }} 还款 {{ amount_due }} {{ currency }}，"
            "目前已逾期，请尽快还款。",
        ),
    },
    "loan_approved": {
        "en-US": (
            "Your loan is approved",
            "Good news: your loan {{ loan_id }} of {{ amount }} {{ currency }} is approved.",
        ),
        "zh-CN": (
            "贷款已获批准",
            "恭喜！您的贷款 {{ loan_id }}（{{ amount }} {{ currency }}）已获批准。",
        ),
    },
    "verification_callback": {
        "en-US": (
            "Please confirm your loan application",
            "We are verifying the loan application {{ loan_id }}. "
            "Please call us back to confirm the details.",
        ),
        "zh-CN": (
            "请确认您的贷款申请",
            "我们正在核实贷款申请 {{ loan_id }}，请回电确认相关信息。",
        ),
    },
    "otp": {
        "en-US": (
            "Your verification code",
            f"Your verification code is {_OTP_CODE}. Never share it with anyone.",
        ),
        "zh-CN": (
            "您的验证码",
            f"您的验证码是 {_OTP_CODE}，请勿泄露给他人。",
        ),
    },
    GENERIC: {
        "en-US": (
            "A message about your account",
            "{{ text | default('You have a new message about your account.', true) }}",
        ),
        "zh-CN": (
            "账户通知",
            "{{ text | default('您有一条新的账户通知。', true) }}",
        ),
    },
}


@dataclass(frozen=True)
class Message:
    """The rendered content of one attempt: a subject (email, push title) and a body."""

    subject: str
    body: str


def resolve_locale(locale: str | None) -> str:
    """The template locale for `locale`: exact, else same language, else en-US."""
    locales = TEMPLATES[GENERIC]
    if locale in locales:
        return locale
    language = (locale or "").split("-")[0].lower()
    return next((lc for lc in locales if lc.split("-")[0] == language), DEFAULT_LOCALE)


@cache
def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(autoescape=False, undefined=Undefined)


@cache
def _compiled(type_: str, locale: str) -> tuple[Template, Template]:
    subject, body = TEMPLATES[type_][locale]
    env = _environment()
    return env.from_string(subject), env.from_string(body)


def render(type_: str, locale: str | None, data: Mapping[str, Any], channel: str) -> Message:
    """Render the subject and body for a notification `type_` in `locale` from `data`."""
    kind = type_ if type_ in TEMPLATES else GENERIC
    subject, body = _compiled(kind, resolve_locale(locale))
    context = {**data, "channel": channel}
    return Message(subject=subject.render(context).strip(), body=body.render(context).strip())
