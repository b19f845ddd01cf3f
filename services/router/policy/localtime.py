"""The borrower's local time: which time zone and country, and when daily intervals open.

Time zone: the profile's `timezone`; else the time zone of the phone number's region
(phonenumbers; the first of several, e.g. a +1 area code's); else the configured default
(`Asia/Shanghai`). A calling code of one region in one time zone (+86 and 179 others of the
215) gives that zone from the code alone, whatever phonenumbers makes of the rest of the
number: the zone then agrees with the country, which is that region's too. Country (for
public holidays): the phone number's region; else the country of the time zone (the system's
zone.tab); else the default country.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from functools import cache, lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone
from phonenumbers.tzdata import TIMEZONE_DATA

from services.router.policy.base import horizon

Minutes = tuple[int, int]  # [start, end) in minutes after local midnight; end may be 1440


def parse_hhmm(value: str) -> int:
    hh, _, mm = value.partition(":")
    minutes = int(hh) * 60 + int(mm)
    if not (0 <= int(hh) <= 24 and 0 <= int(mm) < 60) or minutes > 1440:
        raise ValueError(f"{value!r} is not a local time HH:MM")
    return minutes


def interval(start: str, end: str) -> list[Minutes]:
    """`08:00`–`21:00` → [(480, 1260)]; one crossing midnight splits in two."""
    s, e = parse_hhmm(start), parse_hhmm(end)
    if s == e:
        return [(0, 1440)]
    return [(s, e)] if s < e else [(s, 1440), (0, e)]


_E164 = re.compile(r"^\+([1-9]\d{0,2})(\d{4,14})$")


def _split(number: str) -> tuple[int, str] | None:
    """An E.164 number (what the contract carries) split into its country calling code and
    national digits (calling codes are prefix-free: the first 1–3 digits that are one)."""
    m = _E164.match(number)
    if m:
        digits = m.group(1) + m.group(2)
        for n in (1, 2, 3):
            cc = int(digits[:n])
            if cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE and len(digits) > n:
                return cc, digits[n:]
    return None


def _phone(number: str | None, split: tuple[int, str] | None) -> phonenumbers.PhoneNumber | None:
    """The number as phonenumbers sees it; an E.164 number is built from its `_split`
    (`phonenumbers.parse` costs ~40 µs a call)."""
    if not number:
        return None
    if split is not None:
        return phonenumbers.PhoneNumber(country_code=split[0], national_number=int(split[1]))
    try:
        return phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None


@cache
def one_zone_codes() -> dict[int, tuple[str, str]]:
    """Calling code → (time zone, region) for the codes of one region whose every time zone
    prefix names the same one zone (e.g. 86 → Asia/Shanghai, CN). For these the number's
    type and prefix need not be looked up (phonenumbers' `number_type` and the prefix table:
    about 5 µs of `Machine.start` for a number not seen before, `tools.bench_cpu`)."""
    zones: dict[int, set[str]] = {}
    for prefix, prefix_zones in TIMEZONE_DATA.items():
        split = _split("+" + prefix + "0000")  # padded: the prefix may be the code alone
        if split is not None and prefix.startswith(str(split[0])):
            zones.setdefault(split[0], set()).update(prefix_zones)
    out: dict[int, tuple[str, str]] = {}
    for cc, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        names = zones.get(cc, set())
        if (
            len(regions) == 1
            and regions[0] not in ("ZZ", "001")
            and len(names) == 1
            and str(cc) in TIMEZONE_DATA
        ):
            (name,) = names
            if name != "Etc/Unknown" and _zone(name) is not None:
                out[cc] = (name, str(regions[0]))
    return out


@cache
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=65_536)
def resolve_local(
    profile_tz: str | None, phone: str | None, default_tz: str, default_country: str
) -> tuple[str, str]:
    """(time zone, country) of the borrower, resolved once per profile time zone and phone
    (see the module doc)."""
    tz = profile_tz if profile_tz and _zone(profile_tz) is not None else None
    split = _split(phone) if phone else None
    simple = one_zone_codes().get(split[0]) if split is not None else None
    if simple is not None:
        return tz or simple[0], simple[1]
    number = _phone(phone, split)
    if tz is None and number is not None:
        for name in phone_timezone.time_zones_for_number(number):
            if _zone(name) is not None and name != "Etc/Unknown":
                tz = str(name)
                break
    tz = tz or default_tz
    country = None
    if number is not None:
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(number.country_code or 0, ())
        region = regions[0] if len(regions) == 1 else phonenumbers.region_code_for_number(number)
        if region and region not in ("ZZ", "001"):
            country = str(region)
    return tz, country or _zone_countries().get(tz, default_country)


def resolve_timezone(profile_tz: str | None, phone: str | None, default: str) -> str:
    """The IANA name of the borrower's time zone (see the module doc)."""
    return resolve_local(profile_tz, phone, default, "")[0]


@cache
def _zone_countries() -> dict[str, str]:
    for path in (Path("/usr/share/zoneinfo/zone1970.tab"), Path("/usr/share/zoneinfo/zone.tab")):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        out: dict[str, str] = {}
        for line in lines:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) >= 3:
                out.setdefault(cols[2], cols[0].split(",")[0])
        return out
    return {}


def resolve_country(phone: str | None, tz_name: str, default: str) -> str:
    """ISO 3166 alpha-2 country of the borrower, for public holidays."""
    return resolve_local(tz_name, phone, tz_name, default)[1]


def at_local(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """The instant of `minutes` after local midnight of `day` in `tz` (1440: next midnight)."""
    if minutes >= 1440:
        return datetime.combine(day + timedelta(days=1), time(0, 0), tz)
    return datetime.combine(day, time(minutes // 60, minutes % 60), tz)


def next_open(
    t: datetime,
    tz: ZoneInfo,
    intervals: Sequence[Minutes],
    day_ok: Callable[[date], bool] = lambda _d: True,
) -> datetime | None:
    """The first instant ≥ t inside one of the daily `intervals` on a day where `day_ok`;
    None when there is none within the horizon."""
    local = t.astimezone(tz)
    minutes = local.hour * 60 + local.minute
    if any(s <= minutes < e for s, e in intervals) and day_ok(local.date()):
        return t  # open now: the common case, without building the day's instants
    spans = sorted(intervals)
    day = local.date() - timedelta(days=1)  # an interval may have begun yesterday (DST)
    end_day = horizon(t).date()
    while day <= end_day:
        if day_ok(day):
            for s, e in spans:
                start, stop = at_local(day, s, tz), at_local(day, e, tz)
                if stop > t and start < stop:
                    return max(start, t)
        day += timedelta(days=1)
    return None


def local_day_bounds(t: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[local midnight, next local midnight) around `t`."""
    day = t.astimezone(tz).date()
    return at_local(day, 0, tz), at_local(day, 1440, tz)


def local_day_bounds_s(t: datetime, tz: ZoneInfo) -> tuple[float, float]:
    """`local_day_bounds` as epoch seconds, computed once per zone and local day."""
    return _day_bounds_s(t.astimezone(tz).date(), tz)


@lru_cache(maxsize=4096)
def _day_bounds_s(day: date, tz: ZoneInfo) -> tuple[float, float]:
    return at_local(day, 0, tz).timestamp(), at_local(day, 1440, tz).timestamp()
