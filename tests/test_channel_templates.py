"""Message templates: every template in both locales and on every channel, strict variables,
footers by category, HTML escaping, the sandbox, SMS segment counting and the start-up report."""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from channel_support import dispatch
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2.exceptions import SecurityError
from markupsafe import escape
from redis.asyncio import Redis

import shared.templates as templates_package
from services.sms.smpp.pdu import DC_DEFAULT
from services.sms.smpp.text import encode_text
from shared.channel.app import check_message_templates
from shared.channel.outcomes import OutcomePublisher
from shared.channel.provider import Completed, Message, Provider, SendResult
from shared.channel.receipts import ReceiptBook
from shared.channel.worker import ChannelWorker
from shared.config import ChannelSettings
from shared.contract.models import Channel, Dispatch
from shared.errors import ConfigError
from shared.templates import (
    CHANNELS,
    MissingVariable,
    TemplateValueError,
    catalog,
    check_templates,
    log_template_report,
    missing_variables,
    render,
    required_variables,
    resolve_locale,
    sms_segments,
    template_report,
    use_templates,
)
from shared.templates.__main__ import main as templates_cli
from shared.templates.filters import money
from shared.templates.rendering import html_environment, sample, text_environment
from shared.templates.variables import required_names
from tests.signing_keys import SIGNING

LOCALES = ["en-US", "zh-CN"]
PLAN_TYPES = ["repayment_due", "overdue_notice", "loan_approved", "verification_callback", "otp"]
MESSAGES = [
    "missed_call",
    "reply.amount_due",
    "reply.due_date",
    "reply.how_to_repay",
    "reply.interest_rate",
    "reply.generic",
    "reply.escalated",
    "survey",
    "preference.opted_out",
    "preference.opted_in",
]
LOAN = {
    "loan_id": "L-2024-001",
    "amount_due": "1,250.00",
    "currency": "CNY",
    "due_date": "2026-12-01",
}


def chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


# --- the catalog: what ships ------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
def test_every_plan_type_has_every_channel_and_every_message_sms_and_email(locale: str) -> None:
    templates = catalog().templates[locale]
    for name in PLAN_TYPES:
        t = templates[name]
        assert t.sms and t.email.subject and t.email.text, name
        assert t.push is not None and t.voice is not None, name  # written, not a fallback
    for name in MESSAGES:
        assert templates[name].sms and templates[name].email.text, name


@pytest.mark.parametrize("name", [*PLAN_TYPES, *MESSAGES, "generic"])
@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("channel", CHANNELS)
def test_every_template_renders_with_its_sample_data(name: str, locale: str, channel: str) -> None:
    category, data = sample(name)
    message = render(name, locale, data, channel, category=category)
    for part in (message.subject, message.body, message.html or ""):
        assert "{{" not in part and "{%" not in part and "None" not in part
    assert message.subject and message.body
    assert (message.html is not None) == (channel == "email")
    if name != "generic":  # the generic sample's text is the caller's own
        assert chinese(message.body) == (locale == "zh-CN")


@pytest.mark.parametrize("name", [*PLAN_TYPES, *MESSAGES, "generic"])
@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("channel", CHANNELS)
def test_the_required_variables_alone_are_enough(name: str, locale: str, channel: str) -> None:
    _, data = sample(name)
    needed = required_variables(name, channel, locale)
    assert needed <= set(data), f"config.yaml's sample for {name} lacks {needed - set(data)}"
    message = render(name, locale, {k: data[k] for k in needed}, channel)
    assert message.body and "None" not in message.body


def test_required_variables_of_the_shipped_types() -> None:
    loan = {"amount_due", "currency", "due_date"}
    assert required_variables("repayment_due", "sms", "en-US") == loan
    assert required_variables("overdue_notice", "voice", "zh-CN") == loan
    assert required_variables("loan_approved", "email", "en-US") == {"amount", "currency"}
    assert required_variables("otp", "voice", "en-US") == {"code"}
    assert required_variables("verification_callback", "sms", "zh-CN") == set()
    assert required_variables("reply.escalated", "sms", "en-US") == {"respond_by"}
    assert required_variables("reply.generic", "email", "zh-CN") == set()


def test_repayment_due_sms_in_english_with_its_footer() -> None:
    message = render("repayment_due", "en-US", LOAN, "sms", category="reminder")
    assert message.body == (
        "Tongda Finance: Your repayment of CNY 1,250.00 for loan L-2024-001 is due on "
        "December 1, 2026. Please make sure the funds are available by then. Questions? Call "
        "400-800-8000. Reply STOP to opt out."
    )
    assert message.subject == "Repayment reminder: CNY 1,250.00 due on December 1, 2026"


def test_repayment_due_sms_in_chinese() -> None:
    body = render("repayment_due", "zh-CN", LOAN, "sms", category="reminder").body
    assert body.startswith("【通达金融】您的贷款L-2024-001本期应还1,250.00元，")
    assert "还款日为2026年12月1日" in body
    assert body.endswith("回T退订")


def test_optional_variables_leave_no_trace_when_absent() -> None:
    data = {k: v for k, v in LOAN.items() if k != "loan_id"}
    body = render("repayment_due", "en-US", data, "sms").body
    assert "loan" not in body.replace("Tongda Finance", "")
    assert render("otp", "en-US", {"code": "1", "expires_in_minutes": None}, "sms").body == (
        "Tongda Finance: Your verification code is 1. Never share it with anyone, including "
        "our staff."
    )


def test_otp_is_spelled_out_on_voice() -> None:
    assert "482913" in render("otp", "en-US", {"code": "482913"}, "sms").body
    script = render("otp", "zh-CN", {"code": "482913"}, "voice").body
    assert script.count("4 8 2 9 1 3") == 2 and "482913" not in script


def test_escalation_reply_gives_the_deadline_in_the_borrowers_time_zone() -> None:
    data = {"respond_by": "2026-11-23T02:15:00Z", "timezone": "Asia/Shanghai"}
    assert "2026年11月23日 10:15前" in render("reply.escalated", "zh-CN", data, "sms").body
    en = render("reply.escalated", "en-US", {"respond_by": "2026-11-23T02:15:00Z"}, "sms").body
    assert "will contact you by November 23, 2026 at 2:15 AM." in en


@pytest.mark.parametrize(
    ("locale", "amount", "currency", "expected"),
    [
        ("en-US", "1280", "CNY", "CNY 1,280.00"),
        ("en-US", 99.5, "usd", "USD 99.50"),
        ("zh-CN", "1,280.5", "CNY", "1,280.50元"),
        ("zh-CN", "12", "USD", "12.00美元"),
    ],
)
def test_amounts_carry_their_currency(
    locale: str, amount: object, currency: str, expected: str
) -> None:
    data = {"amount_due": amount, "currency": currency}
    assert expected in render("reply.amount_due", locale, data, "sms").body


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"amount_due": "12 yuan", "currency": "CNY"}, "amount '12 yuan' is not a number"),
        ({"amount_due": "12", "currency": "yuan"}, "currency 'yuan' is not an ISO 4217 code"),
        ({"amount_due": "12", "currency": "CNY", "due_date": "soon"}, "date 'soon'"),
    ],
)
def test_a_value_that_cannot_be_formatted_is_an_error(data: dict[str, Any], problem: str) -> None:
    with pytest.raises(TemplateValueError, match=problem):
        render("reply.amount_due", "en-US", data, "sms")


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


def test_unknown_type_uses_the_generic_template() -> None:
    assert render("birthday", "zh-CN", {}, "push").subject == "账户通知"
    assert render("birthday", "en-US", {"text": "Hello"}, "push").body == "Hello"
    assert missing_variables("birthday", CHANNELS, "en-US", {}) == []


def test_data_is_not_evaluated_as_a_template() -> None:
    body = render("generic", "en-US", {"text": "{{ 7 * 7 }} {% raw %}"}, "push").body
    assert body == "{{ 7 * 7 }} {% raw %}"


# --- strict variables ------------------------------------------------------------------


def test_a_missing_variable_raises_an_error_naming_it() -> None:
    data = {"amount_due": "1", "currency": "CNY"}
    with pytest.raises(MissingVariable) as caught:
        render("repayment_due", "en-US", data, "sms")
    assert caught.value.variable == "due_date"
    assert str(caught.value) == "missing variable 'due_date' (template repayment_due, sms, en-US)"


def test_a_null_value_is_missing() -> None:
    with pytest.raises(MissingVariable, match="'code'"):
        render("otp", "zh-CN", {"code": None}, "sms")
    assert missing_variables("otp", ["sms"], "zh-CN", {"code": None}) == ["code"]


def test_missing_variables_over_the_plans_channels() -> None:
    data = {"loan_id": "L-1", "amount_due": "1200.00"}
    assert missing_variables("repayment_due", ["push", "sms", "email"], "zh-CN", data) == [
        "currency",
        "due_date",
    ]
    assert missing_variables("repayment_due", ["sms"], "en-US", LOAN) == []
    assert missing_variables("otp", ["sms", "voice"], "en-US", {}) == ["code"]
    assert missing_variables("reply.escalated", ["sms"], "en-US", {}) == ["respond_by"]
    assert missing_variables("missed_call", ["sms", "email"], "zh-CN", {}) == []
    assert missing_variables("repayment_due", [], "en-US", {}) == []


@pytest.mark.parametrize(
    ("source", "required"),
    [
        ("{{ a }}{{ b | default('') }}", {"a"}),
        ("{% if a is defined %}{{ a }}{% else %}{{ b }}{% endif %}", {"b"}),
        ("{% if a is defined and b is defined %}{{ a ~ b }}{% endif %}", set()),
        ("{% if a is defined and a > 1 %}{{ a }}{% endif %}", set()),
        ("{% if a %}{{ b }}{% endif %}", {"a", "b"}),
        ("{{ a if a is defined else c }}", {"c"}),
        ("{% set x = d | default(none) %}{% if x %}{{ x | money(e) }}{% endif %}", {"e"}),
        ("{% for i in items %}{{ i }}{% endfor %}", {"items"}),
    ],
)
def test_required_means_used_outside_a_guard(source: str, required: set[str]) -> None:
    assert required_names(source, False) == required
    data: dict[str, Any] = {k: "2" for k in required} | {"e": "CNY", "items": [1]}
    text_environment().from_string(source).render({k: data[k] for k in required})


def test_a_missing_attribute_is_named_too() -> None:
    template = text_environment().from_string("{{ brand.slogan }}")
    with pytest.raises(MissingVariable, match="'slogan'"):
        template.render(brand={"name": "x"})


# --- footers by category ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "footer"),
    [
        ("marketing", True),
        ("reminder", True),
        ("collection", True),
        ("transactional", False),
        ("verification", False),
        (None, False),
    ],
)
def test_sms_opt_out_footer_by_category(category: str | None, footer: bool) -> None:
    en = render("repayment_due", "en-US", LOAN, "sms", category=category).body
    zh = render("repayment_due", "zh-CN", LOAN, "sms", category=category).body
    assert en.endswith(" Reply STOP to opt out.") == footer
    assert zh.endswith("回T退订") == footer
    for channel in ("push", "voice"):
        body = render("repayment_due", "zh-CN", LOAN, channel, category=category).body
        assert "退订" not in body


@pytest.mark.parametrize("category", ["marketing", "reminder", "transactional"])
def test_only_marketing_email_gets_the_unsubscribe_line(category: str) -> None:
    for locale, line in [("en-US", "reply UNSUBSCRIBE"), ("zh-CN", "请回复“退订”")]:
        message = render("generic", locale, {"text": "Offer"}, "email", category=category)
        assert (line in message.body) == (category == "marketing")
        assert (line in (message.html or "")) == (category == "marketing")


def test_footer_categories_come_from_the_data(
    tmp_path: Path,
) -> None:
    directory = copy_templates(tmp_path)
    config = directory / "config.yaml"
    text = config.read_text("utf-8")
    config.write_text(
        text.replace("categories: [marketing, reminder, collection]", "categories: [verification]"),
        "utf-8",
    )
    use_templates(directory)
    data = {"loan_id": "L-1"}
    assert render("missed_call", "en-US", data, "sms", "verification").body.endswith("opt out.")
    assert "STOP" not in render("repayment_due", "en-US", LOAN, "sms", "reminder").body


# --- HTML and the sandbox ----------------------------------------------------------------


def test_html_part_escapes_data_and_the_text_part_does_not() -> None:
    data = {"text": '<script>alert("x")</script> & more', "name": "<b>Li</b>"}
    message = render("generic", "en-US", data, "email")
    assert message.html is not None
    assert "<script>" not in message.html and "<b>Li</b>" not in message.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; more" in message.html
    assert "Dear &lt;b&gt;Li&lt;/b&gt;," in message.html
    assert '<script>alert("x")</script> & more' in message.body  # plain text stays plain
    assert message.body.startswith("Dear <b>Li</b>,")


def test_an_own_html_part_is_rendered_with_autoescape(
    tmp_path: Path,
) -> None:
    directory = copy_templates(tmp_path)
    with (directory / "en-US.yaml").open("a", encoding="utf-8") as f:
        f.write(
            "\npromo:\n  sms: '{{ text }}'\n  email:\n    subject: Offer\n    text: '{{ text }}'\n"
            "    html: '<p><a href=\"https://example.com/offer\">{{ text }}</a></p>'\n"
        )
    use_templates(directory)
    html = render("promo", "en-US", {"text": "<img src=x onerror=alert(1)>"}, "email").html
    assert html is not None
    assert '<a href="https://example.com/offer">&lt;img src=x onerror=alert(1)&gt;</a>' in html


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1), st.text())
def test_any_data_is_escaped_in_html_and_kept_in_text(text: str, name: str) -> None:
    message = render("generic", "zh-CN", {"text": text, "name": name}, "email")
    assert message.html is not None
    for line in text.strip().splitlines():
        assert line.strip() in message.body  # the plain text keeps it as given
        assert escape(line.strip()) in message.html  # the HTML has it escaped, never raw
    assert f"尊敬的{escape(name) if name else '客户'}：" in message.html


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ brand.__class__.__subclasses__() }}",
        "{{ money.__globals__ }}",
        "{{ brand.update({'name': 'x'}) }}",  # data is immutable too
    ],
)
def test_the_sandbox_refuses_unsafe_access(source: str) -> None:
    for env in (text_environment(), html_environment()):
        with pytest.raises(SecurityError):
            env.from_string(source).render(brand={"name": "n"}, money=money)


# --- SMS segments ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "chars", "segments"),
    [
        ("", "GSM-7", 0, 1),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ¡ÄÖÑÜ§¿äöñüà", "GSM-7", 41, 1),  # the basic set
        ("€" * 80, "GSM-7", 160, 1),  # extension characters count 2
        ("€" * 81, "GSM-7", 162, 2),
        ("{" + "a" * 159, "GSM-7", 161, 2),
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 306, 3),  # the escape pair is never split
        ("ç", "UCS-2", 1, 1),  # only the capital Ç is GSM-7
        ("中" * 70, "UCS-2", 70, 1),
        ("中" * 71, "UCS-2", 71, 2),
        ("中" * 134, "UCS-2", 134, 2),
        ("中" * 135, "UCS-2", 135, 3),
        ("a" * 67 + "中", "UCS-2", 68, 1),
        ("😀" * 35, "UCS-2", 70, 1),  # an emoji is two UTF-16 code units
        ("😀" * 36, "UCS-2", 72, 2),
        ("中" * 66 + "😀" + "中" * 66, "UCS-2", 134, 3),  # a surrogate pair is never split
    ],
)
def test_sms_segments(text: str, encoding: str, chars: int, segments: int) -> None:
    length = sms_segments(text)
    assert (length.encoding, length.chars, length.segments) == (encoding, chars, segments)


SMS_ALPHABET = st.sampled_from(["a", "€", "{", "中", "😀", "é", "ç", " ", "\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(SMS_ALPHABET, max_size=400).map("".join))
def test_segments_agree_with_the_smpp_codec(text: str) -> None:
    """The report counts the parts the SMPP provider really sends (services/sms/smpp)."""
    length = sms_segments(text)
    encoded = encode_text(text, ref=1)
    assert length.segments == len(encoded.parts)
    assert (length.encoding == "GSM-7") == (encoded.data_coding == DC_DEFAULT)


def test_template_report_lists_every_sms_template_and_warns_over_the_maximum() -> None:
    lines = template_report(3)
    assert len(lines) == len(catalog().names) * len(LOCALES)
    assert not [line for line in lines if line.startswith("WARNING")]
    category, data = sample("repayment_due")
    body = render("repayment_due", "en-US", data, "sms", category).body
    assert category == "reminder" and body.endswith("Reply STOP to opt out.")
    assert 160 < len(body) <= 306  # so two GSM-7 segments
    expected = f"sms repayment_due en-US (reminder): GSM-7, {len(body)} chars, 2 segments"
    assert expected in lines
    warned = [line for line in template_report(1) if line.startswith("WARNING")]
    assert f"WARNING {expected}: over the maximum" in warned
    assert warned and all(" 1 segment" not in line for line in warned)
    assert any(line.startswith("sms otp zh-CN (transactional): UCS-2") for line in lines)


def test_report_is_logged_with_warnings_over_the_maximum(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.templates")
    log_template_report(logging.getLogger("test.templates"), 1)
    levels = {r.levelno for r in caplog.records}
    assert levels == {logging.INFO, logging.WARNING}
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.endswith("over the maximum (max 1)") and warning.startswith("sms ")


@pytest.mark.parametrize("channel", ["sms", "email"])
def test_channel_services_check_the_templates_at_start_up(
    channel: Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.channel.app")
    check_message_templates(ChannelSettings(channel=channel, max_sms_segments=1))
    lines = [r for r in caplog.records if r.name == "shared.channel.app"]
    if channel == "email":  # checked, not reported
        assert lines == []
        return
    assert len(lines) == len(catalog().names) * len(LOCALES)
    over = [r.getMessage() for r in lines if r.levelno == logging.WARNING]
    assert over and all(m.endswith("segments: over the maximum (max 1)") for m in over)


def test_an_operators_templates_directory_replaces_the_shipped_one(tmp_path: Path) -> None:
    directory = copy_templates(tmp_path)
    config = directory / "config.yaml"
    config.write_text(config.read_text("utf-8").replace("通达金融", "示例银行"), "utf-8")
    check_message_templates(ChannelSettings(channel="push", templates_path=directory))
    assert render("otp", "zh-CN", {"code": "1"}, "sms").body.startswith("【示例银行】")
    with pytest.raises(ConfigError, match=r"config\.yaml: cannot read"):
        check_message_templates(ChannelSettings(channel="sms", templates_path=tmp_path / "no"))


def test_report_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert templates_cli([]) == 0
    out = capsys.readouterr().out
    assert "sms survey zh-CN (transactional): UCS-2" in out
    assert out.rstrip().endswith("SMS templates, 0 over 3 segments")
    assert templates_cli(["--max-segments", "1"]) == 1
    assert templates_cli(["--templates", "/nonexistent"]) == 2
    assert "invalid templates: /nonexistent/config.yaml: cannot read" in capsys.readouterr().err


def test_a_sample_lacking_a_variable_is_reported_not_fatal(
    tmp_path: Path,
) -> None:
    directory = copy_templates(tmp_path)
    with (directory / "en-US.yaml").open("a", encoding="utf-8") as f:
        f.write("\nnew_type:\n  sms: '{{ balance }}'\n  email: {subject: s, text: t}\n")
    use_templates(directory)
    warning = next(line for line in template_report(3) if "new_type" in line)
    assert (
        warning == "WARNING sms new_type en-US: not measured: missing variable 'balance' "
        "(template new_type, sms, en-US)"
    )
    # a template only the default locale has is taken from it in the other locales
    assert render("new_type", "zh-CN", {"balance": "9"}, "sms").body == "【通达金融】9"
    assert render("new_type", "zh-CN", {"balance": "9"}, "push").subject == "s"


# --- invalid files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "find", "replace", "error"),
    [
        ("en-US.yaml", "survey:\n  sms:", "survey:\n  fax:", r"en-US.yaml: survey: (sms|fax)"),
        ("zh-CN.yaml", '  voice: "您好，这里是{{ brand.name }}。{{ text', '  fax: "', "generic"),
        ("config.yaml", "  zh-CN:\n    name: 通达金融", "  zz:\n    name: x", "brand: no entry"),
        ("en-US.yaml", 'Never share it with anyone."', '{% if %}"', "line 1"),
        ("en-US.yaml", "\nsurvey:", "\nsurvey_en:", "zh-CN.yaml: survey: not in en-US.yaml"),
    ],
)
def test_invalid_template_files_are_refused_naming_the_place(
    tmp_path: Path,
    file: str,
    find: str,
    replace: str,
    error: str,
) -> None:
    path = copy_templates(tmp_path) / file
    text = path.read_text("utf-8")
    assert find in text
    path.write_text(text.replace(find, replace, 1), "utf-8")
    with pytest.raises(ConfigError, match=error):
        use_templates(path.parent)
        check_templates()


# --- the worker --------------------------------------------------------------------------


class RecordingProvider(Provider):
    name = "recording"

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def send(self, dispatch: Dispatch, message: Message) -> SendResult:
        self.messages.append(message)
        return Completed("delivered", "pm-1")


class RecordingProducer:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    async def send_and_wait(
        self, topic: str, key: bytes, value: bytes, headers: object = None
    ) -> None:
        self.values.append(value)


async def test_the_worker_fails_an_attempt_naming_the_missing_variable(redis: Redis) -> None:
    settings = ChannelSettings(channel="sms", key_prefix=f"t{uuid.uuid4().hex[:8]}:", **SIGNING)
    provider, producer = RecordingProvider(), RecordingProducer()
    publisher = OutcomePublisher(settings, producer, provider.name)
    worker = ChannelWorker(
        settings,
        provider,
        None,  # hand_over() needs no consumer
        producer,
        redis,
        ReceiptBook(settings, redis, publisher),
        publisher,
    )
    phone = "+8613800139999"
    await worker.hand_over(dispatch("sms", phone, data={"amount_due": "1", "currency": "CNY"}))
    await worker.hand_over(dispatch("sms", phone, template="missed_call", category="verification"))
    await worker.hand_over(dispatch("sms", phone, locale="en-US", data=LOAN, category="reminder"))
    outcomes = [orjson.loads(v) for v in producer.values]
    assert [o["outcome"] for o in outcomes] == ["failed", "delivered", "delivered"]
    assert outcomes[0]["detail"] == (
        "template error: missing variable 'due_date' (template repayment_due, sms, zh-CN)"
    )
    missed, reminder = provider.messages
    assert missed.body.startswith("【通达金融】我们刚才致电您") and "退订" not in missed.body
    assert reminder.body.endswith("Reply STOP to opt out.")


# --- helpers -------------------------------------------------------------------------------


def copy_templates(tmp_path: Path) -> Path:
    """A copy of the shipped template files in a directory of its own."""
    directory = tmp_path / "templates"
    directory.mkdir()
    for source in Path(templates_package.__file__).parent.glob("*.yaml"):
        shutil.copy(source, directory / source.name)
    return directory


@pytest.fixture(autouse=True)
def shipped_templates_afterwards() -> Iterator[None]:
    """Whatever a test loads with use_templates(), the next one renders the shipped ones."""
    yield
    use_templates(None)
