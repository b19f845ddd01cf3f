"""Each contact rule on its own, and the shipped presets, through `ContactPolicy.decide`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import timezone as phone_timezone

from services.router.ledger import Entry, LedgerView
from services.router.policy import Contact, ContactPolicy, load_policy
from services.router.policy.business_hours import is_working_day
from services.router.policy.config import load_policy_config
from services.router.policy.localtime import (
    one_zone_codes,
    resolve_country,
    resolve_local,
    resolve_timezone,
)
from shared.errors import ConfigError

SH = ZoneInfo("Asia/Shanghai")
NY = ZoneInfo("America/New_York")
CN = load_policy("cn")


def contact(**kw: Any) -> Contact:
    values: dict[str, Any] = {
        "customer_id": "c1",
        "category": "collection",
        "priority": "normal",
        "channel": "voice",
        "kind": "borrower",
        "relation": None,
        "address": "+8613800000000",
        "data": {"loan_id": "L1"},
        "tz": SH,
        "country": "CN",
        "quiet_hours": (),
        "opted_out": frozenset(),
        "revoked": frozenset(),
        "ledger": LedgerView(),
    }
    values.update(kw)
    return Contact(**values)


def local(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz).astimezone(UTC)  # type: ignore[misc]


# --- contact windows ----------------------------------------------------------------------


def test_collection_at_2230_local_is_deferred_to_0800_next_day() -> None:
    v = CN.decide(contact(), local(SH, 2026, 11, 23, 22, 30))
    assert (v.action, v.rule) == ("defer", "contact_window")
    assert v.until == local(SH, 2026, 11, 24, 8, 0)
    assert v.decision(SH) == "deferred: contact_window until 2026-11-24T08:00:00+08:00"


def test_transactional_goes_out_at_any_time() -> None:
    v = CN.decide(contact(category="transactional", channel="sms"), local(SH, 2026, 11, 23, 3, 0))
    assert v.action == "allow"


def test_the_window_is_the_borrowers_local_time() -> None:
    at = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)  # 22:00 Shanghai, 09:00 New York
    assert CN.decide(contact(tz=SH), at).action == "defer"
    assert CN.decide(contact(tz=NY), at).action == "allow"


def test_window_edges_are_half_open() -> None:
    assert CN.decide(contact(), local(SH, 2026, 11, 23, 8, 0)).action == "allow"
    assert CN.decide(contact(), local(SH, 2026, 11, 23, 20, 59)).action == "allow"
    assert CN.decide(contact(), local(SH, 2026, 11, 23, 21, 0)).action == "defer"


# --- quiet hours --------------------------------------------------------------------------


def test_quiet_hours_push_the_window_further() -> None:
    c = contact(quiet_hours=(("07:00", "10:00"),))
    v = CN.decide(c, local(SH, 2026, 11, 23, 22, 30))
    assert (v.rule, v.until) == ("contact_window", local(SH, 2026, 11, 24, 10, 0))


def test_quiet_hours_across_midnight_and_transactional_exempt() -> None:
    c = contact(category="reminder", channel="sms", quiet_hours=(("20:00", "09:30"),))
    v = CN.decide(c, local(SH, 2026, 11, 23, 12, 0))
    assert v.action == "allow"
    v = CN.decide(c, local(SH, 2026, 11, 23, 20, 15))
    assert (v.rule, v.until) == ("quiet_hours", local(SH, 2026, 11, 24, 9, 30))
    t = contact(category="transactional", channel="sms", quiet_hours=(("00:00", "23:59"),))
    assert CN.decide(t, local(SH, 2026, 11, 23, 20, 15)).action == "allow"


# --- business hours for third parties -----------------------------------------------------


def employer(**kw: Any) -> Contact:
    return contact(category="verification", kind="backup_contact", relation="employer", **kw)


def test_employer_only_in_business_hours_on_working_days() -> None:
    # Monday 2026-11-23 12:30: lunch break → 13:30
    v = CN.decide(employer(), local(SH, 2026, 11, 23, 12, 30))
    assert (v.rule, v.until) == ("business_hours", local(SH, 2026, 11, 23, 13, 30))
    # Friday evening → Monday 09:00
    v = CN.decide(employer(), local(SH, 2026, 11, 27, 18, 0))
    assert v.until == local(SH, 2026, 11, 30, 9, 0)
    assert CN.decide(employer(), local(SH, 2026, 11, 24, 10, 0)).action == "allow"


def test_public_holidays_are_skipped_and_make_up_working_days_count() -> None:
    # 2026-10-01..07 National Day holiday (Thursday..Wednesday); the next working day is 10-08
    v = CN.decide(employer(), local(SH, 2026, 9, 30, 18, 0))
    assert v.until == local(SH, 2026, 10, 8, 9, 0)
    # 2026-01-04 is a Sunday made a working day (调休) in China
    assert is_working_day("CN", datetime(2026, 1, 4).date())
    v = CN.decide(employer(), local(SH, 2026, 1, 3, 18, 0))  # Saturday after New Year
    assert v.until == local(SH, 2026, 1, 4, 9, 0)


def test_other_backup_relations_are_not_bound_to_business_hours() -> None:
    spouse = contact(category="verification", kind="backup_contact", relation="spouse")
    assert CN.decide(spouse, local(SH, 2026, 11, 28, 19, 0)).action == "allow"  # Saturday


# --- gates --------------------------------------------------------------------------------


def test_collection_never_reaches_a_backup_contact() -> None:
    c = contact(kind="backup_contact", relation="spouse")
    v = CN.decide(c, local(SH, 2026, 11, 23, 10, 0))
    assert (v.action, v.rule) == ("suppress", "third_party")


def test_opt_out_and_consent_suppress_all_but_transactional_whatever_the_priority() -> None:
    at = local(SH, 2026, 11, 23, 10, 0)
    out = contact(channel="sms", opted_out=frozenset({"sms"}), priority="urgent")
    assert CN.decide(out, at).rule == "opted_out"
    revoked = contact(channel="sms", revoked=frozenset({"sms"}))
    assert CN.decide(revoked, at).rule == "no_consent"
    otp = contact(channel="sms", category="transactional", opted_out=frozenset({"sms"}))
    assert CN.decide(otp, at).action == "allow"


def test_no_address_is_suppressed_before_anything_else() -> None:
    v = CN.decide(contact(address=None), local(SH, 2026, 11, 23, 23, 0))
    assert (v.action, v.rule) == ("suppress", "no_address")


# --- frequency caps -----------------------------------------------------------------------


def ledger(*events: tuple[str, str, datetime]) -> LedgerView:
    return LedgerView(
        3,
        [
            Entry("voice", kind, debt, f"n{i}:0:1", at.timestamp())
            for i, (kind, debt, at) in enumerate(events)
        ],
    )


def test_seven_call_attempts_per_debt_in_seven_days() -> None:
    now = local(SH, 2026, 11, 23, 10, 0)
    six = [("attempt", "L1", now - timedelta(days=d, hours=1)) for d in range(6)]
    assert CN.decide(contact(ledger=ledger(*six)), now).action == "allow"
    seven = [*six, ("attempt", "L1", now - timedelta(days=6, hours=20))]
    assert CN.decide(contact(ledger=ledger(*seven)), now).rule == "voice_debt_attempt_cap"
    # another debt of the same borrower has its own count
    assert CN.decide(contact(ledger=ledger(*seven), data={"loan_id": "L2"}), now).action == (
        "allow"
    )
    # an attempt 7 days and a minute ago no longer counts
    old = [*six, ("attempt", "L1", now - timedelta(days=7, minutes=1))]
    assert CN.decide(contact(ledger=ledger(*old)), now).action == "allow"


def test_no_call_in_the_seven_days_after_an_answered_call() -> None:
    now = local(SH, 2026, 11, 23, 10, 0)
    answered = ledger(("answered", "L1", now - timedelta(days=6)))
    assert CN.decide(contact(ledger=answered), now).rule == "voice_debt_after_answered"
    later = ledger(("answered", "L1", now - timedelta(days=7, seconds=1)))
    assert CN.decide(contact(ledger=later), now).action == "allow"


def test_at_most_three_answered_calls_per_local_day_counting_calls_in_flight() -> None:
    now = local(SH, 2026, 11, 23, 20, 0)
    # answered calls about three other debts today, and one yesterday evening
    events = [("answered", f"D{i}", local(SH, 2026, 11, 23, 9 + i, 0)) for i in range(2)]
    events.append(("answered", "D9", local(SH, 2026, 11, 22, 23, 0)))
    assert CN.decide(contact(ledger=ledger(*events), data={"loan_id": "X"}), now).action == (
        "allow"
    )
    events.append(("inflight", "D7", now - timedelta(minutes=1)))  # may still be answered
    v = CN.decide(contact(ledger=ledger(*events), data={"loan_id": "X"}), now)
    assert v.rule == "voice_daily_answered_cap"


def test_caps_do_not_apply_to_other_categories_or_channels() -> None:
    now = local(SH, 2026, 11, 23, 10, 0)
    full = ledger(*[("attempt", "L1", now - timedelta(hours=h)) for h in range(1, 9)])
    assert CN.decide(contact(ledger=full, category="verification"), now).action == "allow"
    assert CN.decide(contact(ledger=full, channel="sms"), now).action == "allow"


def test_a_capped_call_outside_the_window_waits_for_the_window_first() -> None:
    now = local(SH, 2026, 11, 23, 22, 0)
    full = ledger(*[("attempt", "L1", now - timedelta(hours=h)) for h in range(1, 8)])
    assert CN.decide(contact(ledger=full), now).action == "defer"


# --- presets and configuration ------------------------------------------------------------


def test_us_preset_is_regulation_f() -> None:
    us = load_policy("us")
    at = local(NY, 2026, 11, 23, 21, 30)
    v = us.decide(contact(tz=NY, country="US", channel="sms"), at)
    assert (v.rule, v.until) == ("contact_window", local(NY, 2026, 11, 24, 8, 0))
    now = local(NY, 2026, 11, 23, 10, 0)
    seven = ledger(*[("attempt", "L1", now - timedelta(hours=h)) for h in range(1, 8)])
    assert us.decide(contact(tz=NY, ledger=seven), now).rule == "regf_7_in_7"


def test_none_preset_still_honours_opt_out() -> None:
    none = load_policy("none")
    at = local(SH, 2026, 11, 23, 3, 0)
    assert none.decide(contact(), at).action == "allow"
    assert none.decide(contact(opted_out=frozenset({"voice"})), at).rule == "opted_out"


def test_a_bad_rules_file_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("windows:\n  categories:\n    collection: [{start: '25:00', end: '21:00'}]\n")
    with pytest.raises(ConfigError, match=r"rules\.yaml.*windows\.categories\.collection"):
        load_policy_config(path)
    path.write_text(
        "frequency:\n  caps:\n"
        "    - {rule: x, channels: [fax], categories: [collection], limit: 1}\n"
    )
    with pytest.raises(ConfigError, match=r"frequency\.caps\.0\.channels"):
        load_policy_config(path)


def test_time_zone_falls_back_to_the_phone_region_then_the_default() -> None:
    assert resolve_timezone("Europe/Paris", "+8613800000000", "Asia/Shanghai") == "Europe/Paris"
    assert resolve_timezone(None, "+12125550123", "Asia/Shanghai") == "America/New_York"
    assert resolve_timezone(None, "+8613800000000", "UTC") == "Asia/Shanghai"
    assert resolve_timezone(None, None, "Asia/Shanghai") == "Asia/Shanghai"
    assert resolve_country("+12125550123", "America/New_York", "CN") == "US"
    assert resolve_country(None, "America/New_York", "CN") == "US"
    assert resolve_country(None, "Asia/Shanghai", "US") == "CN"


def test_a_calling_code_of_one_zone_resolves_as_phonenumbers_does_for_every_valid_number() -> None:
    """The shortcut (zone and region from the calling code alone) agrees with phonenumbers'
    full lookup (number type, then the prefix table) on the example number of every type of
    every region it covers; and the codes left to the full lookup are the ones of several
    regions or zones (+1, +7, +44 …)."""
    codes = one_zone_codes()
    assert codes[86] == ("Asia/Shanghai", "CN") and codes[852] == ("Asia/Hong_Kong", "HK")
    assert not {1, 7, 44, 61, 62} & codes.keys()  # several regions or several zones
    checked = 0
    for cc, (zone, region) in codes.items():
        for ntype in vars(phonenumbers.PhoneNumberType).values():
            if not isinstance(ntype, int):
                continue
            example = phonenumbers.example_number_for_type(region, ntype)
            if example is None or example.country_code != cc:
                continue
            names = [z for z in phone_timezone.time_zones_for_number(example) if z != "Etc/Unknown"]
            if not names:
                continue  # phonenumbers knows no zone for it: the code's zone is used
            e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            assert names[0] == zone, e164
            assert resolve_local(None, e164, "UTC", "ZZ") == (names[0], region), e164
            checked += 1
    assert checked > 500
    # several zones under one code: still by the number's prefix
    assert resolve_timezone(None, "+12135550123", "Asia/Shanghai") == "America/Los_Angeles"
    assert resolve_local(None, "+73952200000", "UTC", "ZZ") == ("Asia/Irkutsk", "RU")


def test_a_number_phonenumbers_cannot_type_takes_its_calling_codes_zone() -> None:
    """+86 with 13 national digits is no valid Chinese number (phonenumbers: type unknown, so
    no zone); its country is CN all the same, and so is its zone now, not the default."""
    assert not phonenumbers.is_valid_number(phonenumbers.parse("+8613800000009999"))
    assert resolve_local(None, "+8613800000009999", "UTC", "US") == ("Asia/Shanghai", "CN")
    assert resolve_local("Europe/Paris", "+8613800000009999", "UTC", "US") == (
        "Europe/Paris",
        "CN",
    )


def test_policy_default_is_permissive_where_config_is_silent() -> None:
    assert ContactPolicy().decide(contact(), local(SH, 2026, 11, 23, 3, 0)).action == "allow"


# --- the windows' answers cached per batch instant ----------------------------------------

_instants = st.sampled_from(
    [
        local(SH, 2026, 11, 23, 22, 30),
        local(SH, 2026, 11, 24, 10, 0),
        local(SH, 2026, 10, 1, 10, 0),  # national day: no business hours
        local(NY, 2026, 11, 24, 12, 0),
        local(SH, 2026, 11, 28, 12, 45),  # a Saturday
    ]
)
_VARIANTS: dict[str, list[Any]] = {
    "category": ["collection", "transactional", "reminder", "marketing"],
    "channel": ["voice", "sms", "email", "push"],
    "kind": ["borrower", "alt_phone", "backup_contact", "notice"],
    "relation": [None, "employer", "spouse"],
    "tz": [SH, NY, ZoneInfo("Europe/London")],
    "country": ["CN", "US", "GB"],
    "quiet_hours": [(), [("12:00", "14:00")], (("22:00", "07:00"),)],
    "hold_until": [None, local(SH, 2026, 11, 24, 11, 0).timestamp()],
}
_contacts = st.builds(contact, **{name: st.sampled_from(vs) for name, vs in _VARIANTS.items()})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_contacts, _instants), min_size=1, max_size=6))
def test_cached_window_answers_are_the_rules_answers(calls: list[tuple[Contact, datetime]]) -> None:
    """One policy judging a stream of contacts, each followed by its variants in every field
    the windows may read (their answers cached per instant), answers as a new policy does."""
    cached = load_policy("cn")
    for c, now in calls:
        variants = [c] + [
            msgspec.structs.replace(c, **{name: v})
            for name, values in _VARIANTS.items()
            for v in values
        ]
        for variant in variants:
            fresh = ContactPolicy(cached.config)
            assert cached.decide(variant, now) == fresh.decide(variant, now)
