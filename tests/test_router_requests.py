"""The msgspec mirror of `notification.requested/v1` (services/router/messages.Requested) that
the router decodes requests with first (services/router/intake.fast_request): whatever it
accepts, the pydantic model accepts with the same values; whatever it refuses goes to the
model, so a dead-lettered request carries the model's reason (hypothesis over near-valid and
invalid values)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import msgspec
import pytest
from aiokafka.structs import ConsumerRecord, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.router.intake import fast_request, read_batch
from services.router.messages import BackupContact, Contacts, Requested
from services.router.plans import load_plans
from shared.config import Topics
from shared.contract.codec import decode
from shared.contract.models import NotificationRequested
from shared.errors import InvalidEvent

SCHEMA = "notification.requested/v1"


def _same(mirror: Any, model: Any) -> None:
    """The mirror's value equals the model's, field by field, down into contacts."""
    if isinstance(mirror, Requested | Contacts | BackupContact):
        for f in msgspec.structs.fields(mirror):
            _same(getattr(mirror, f.name), getattr(model, f.name))
    elif isinstance(mirror, list):
        assert isinstance(model, list) and len(mirror) == len(model)
        for a, b in zip(mirror, model, strict=True):
            _same(a, b)
    elif isinstance(mirror, datetime):
        assert isinstance(model, datetime)
        assert mirror == model and mirror.utcoffset() == model.utcoffset()
        assert (mirror.microsecond, mirror.second) == (model.microsecond, model.second)
    else:
        assert type(mirror) is type(model) and mirror == model


_json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _json_scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_odd_times = st.from_regex(
    r"\A(19|20)[0-9][0-9]-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt _]([01][0-9]|2[0-4])"
    r":[0-5][0-9](:[0-6][0-9]([.,][0-9]{0,10})?)?([Zz]|[+-]([01][0-9]|2[0-4]):?[0-5][0-9])?\Z"
)


@st.composite
def _valid_times(draw: st.DrawFn) -> str:
    """An aware time written in one of the ways RFC 3339 allows (and some it does not)."""
    t = draw(st.datetimes(datetime(1970, 1, 2), datetime(2200, 1, 1)))
    text = t.isoformat(sep=draw(st.sampled_from("T t")), timespec="seconds")
    digits = draw(st.integers(0, 9))
    if digits:
        text += "." + "".join(draw(st.sampled_from("0123456789")) for _ in range(digits))
    hours, minutes = draw(st.integers(-23, 23)), draw(st.integers(0, 59))
    zone = draw(
        st.sampled_from(["Z", "z", f"{hours:+03d}:{minutes:02d}", f"{hours:+03d}{minutes:02d}"])
    )
    return text + zone


_times = _valid_times() | _odd_times
_phones = st.from_regex(r"\A\+?[0-9]{5,17}\n?\Z") | st.text(max_size=6)
_emails = st.from_regex(r"\A[a-z.@ ]{0,8}@[a-z]{1,5}\.[a-z]{1,3}\n?\Z") | st.text(max_size=6)
_locales = st.from_regex(r"\A[A-Za-z0-9-]{0,12}\n?\Z")
_ids = st.text(min_size=1, max_size=4) | st.text(min_size=0, max_size=135)


_wrong = st.none() | st.integers() | st.text(max_size=3) | st.just(...)  # `...`: left out


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a value; sometimes null, a value of the wrong type, or left out."""
    return st.one_of(strategy, strategy, strategy, _wrong)


_backup = st.fixed_dictionaries(
    {},
    optional={
        "name": _maybe(st.text(max_size=5)),
        "relation": _maybe(st.sampled_from(["employer", "spouse", ""]) | st.text(max_size=70)),
        "phone": _maybe(_phones),
        "email": _maybe(_emails),
    },
)
_contacts = st.fixed_dictionaries(
    {},
    optional={
        "phone": _maybe(_phones),
        "email": _maybe(_emails),
        "push_tokens": _maybe(st.lists(st.text(max_size=3), max_size=12)),
        "backup_contacts": _maybe(st.lists(_backup, max_size=12)),
        "extra": _json,
    },
)
_REQUIRED: dict[str, st.SearchStrategy[Any]] = {
    "schema": st.sampled_from([SCHEMA, SCHEMA, SCHEMA, "notification.requested/v2"]),
    "id": _ids,
    "type": st.sampled_from(["overdue_notice", "otp", ""]) | st.text(max_size=70),
    "customer_id": _ids,
    "occurred_at": _times,
}


@st.composite
def _requests(draw: st.DrawFn) -> dict[str, Any]:
    """A request close to valid: its required fields, a few of them made wrong or left out,
    and any of the optional ones."""
    obj: dict[str, Any] = {name: draw(strategy) for name, strategy in _REQUIRED.items()}
    for name in draw(st.sets(st.sampled_from(sorted(_REQUIRED)), max_size=2)):
        if draw(st.integers(0, 3)) == 0:
            obj[name] = draw(_wrong)
    optional: dict[str, st.SearchStrategy[Any]] = {
        "schema_": st.just(SCHEMA),
        "priority": _maybe(st.sampled_from(["low", "normal", "high", "urgent", "URGENT"])),
        "category": _maybe(st.sampled_from(["collection", "marketing", "other"])),
        "locale": _maybe(_locales),
        "expires_at": _maybe(_times),
        "data": _maybe(st.dictionaries(st.text(max_size=8), _json, max_size=5)),
        "contacts": _maybe(_contacts),
        "unknown": _json,
    }
    obj.update(draw(st.fixed_dictionaries({}, optional=optional)))
    return obj


def _without_left_out(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_left_out(v) for k, v in value.items() if v is not ...}
    if isinstance(value, list):
        return [_without_left_out(v) for v in value]
    return value


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests(), st.booleans())
def test_what_the_mirror_accepts_the_model_accepts_alike(obj: dict[str, Any], ascii_: bool) -> None:
    raw = json.dumps(_without_left_out(obj), ensure_ascii=ascii_).encode()
    mirror = fast_request(raw)
    try:
        model = NotificationRequested.model_validate_json(raw)
    except ValidationError:
        assert mirror is None
        return
    if mirror is not None:
        _same(mirror, model)


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2026-11-24T02:00:00.9999999Z",  # msgspec would round it up to the next second
        "2026-11-24T02:00:00.1234567+08:00",
        "2026-11-24T02:00:00\\u002e9999999Z",  # the same, its dot escaped
        "2026-11-24T02:00Z",  # no seconds: the model reads it, the mirror does not
        "2026-11-24T02:00:00,5Z",
    ],
)
def test_times_the_mirror_may_read_otherwise_are_the_models(occurred_at: str) -> None:
    raw = (
        f'{{"schema": "{SCHEMA}", "id": "n1", "type": "overdue_notice", "customer_id": "c1", '
        f'"occurred_at": "{occurred_at}"}}'
    ).encode()
    assert fast_request(raw) is None
    model = decode(raw, NotificationRequested)
    assert model.occurred_at.second in (0, 1)


def test_an_invalid_request_is_dead_lettered_with_the_models_reason() -> None:
    topics = Topics()
    tp = TopicPartition(topics.requested, 0)
    bad = [
        b'{"schema": "notification.requested/v1", "id": "", "type": "x", "customer_id": "c"}',
        b'{"schema": "notification.requested/v1", "id": "n", "type": "overdue_notice", '
        b'"customer_id": "c", "occurred_at": "2026-11-24T02:00:00", "contacts": {"phone": "1"}}',
        b'{"schema": "notification.requested/v9"}',
        b"[1]",
    ]
    batch = {
        tp: [
            ConsumerRecord(tp.topic, 0, i, 0, 0, b"c", v, None, 0, 0, []) for i, v in enumerate(bad)
        ]
    }
    intake = read_batch(batch, topics, load_plans(None))
    assert len(intake.dead) == len(bad) and not intake.requests
    for (msg, exc), raw in zip(intake.dead, bad, strict=True):
        with pytest.raises(InvalidEvent) as expected:
            decode(raw, NotificationRequested)
        assert (exc.code, exc.detail) == (expected.value.code, expected.value.detail)
        assert msg.value == raw


@pytest.mark.parametrize(
    "body",
    [
        '"id": "a", "id": "b"',  # both take the last
        '"id": "", "id": "b"',  # the mirror refuses the first: the model decides
        '"id": "a", "contacts": {"phone": "+8613800000001", "phone": "+8613800000002"}',
    ],
)
def test_a_repeated_field_reads_as_the_model_reads_it(body: str) -> None:
    raw = (
        f'{{"schema": "{SCHEMA}", "type": "overdue_notice", "customer_id": "c1", '
        f'"occurred_at": "2026-11-24T02:00:00Z", {body}}}'
    ).encode()
    model = NotificationRequested.model_validate_json(raw)
    mirror = fast_request(raw)
    if mirror is not None:
        _same(mirror, model)
