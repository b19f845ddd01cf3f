"""Decoding of Kafka values into contract models, with the precise reasons a value is refused.

Limits along the path (docs/reliability.md, "Limits"):

* `MAX_VALUE_BYTES` (1 MiB): a value from outside (a request, a profile, an inquiry) and the
  body of `POST /v1/notifications`;
* `MAX_INTERNAL_VALUE_BYTES`: tongda's own records (dispatches, outcomes, timers). A dispatch
  carries the request's `data` plus an envelope, and re-serialising numbers can lengthen them
  (`1E9` → `1000000000.0`): the limit leaves room for both, so a request accepted is never a
  dispatch refused;
* `MAX_DEPTH` (64): containers nested deeper are refused (`too_deep`), before anything
  recursive (pydantic's serialiser gives up at 255 levels, orjson's parser at 1,024) sees them.
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar, cast

import orjson
from pydantic import BaseModel, ValidationError

from shared.contract.models import CONTRACT_MODELS, INTERNAL_MODELS
from shared.errors import InvalidEvent

MAX_VALUE_BYTES = 1024 * 1024  # values from outside over 1 MiB are refused
DISPATCH_ENVELOPE_BYTES = 64 * 1024  # a dispatch's fields besides `data`, with room to spare
REWRITE_FACTOR = 4  # the most re-serialising can lengthen JSON numbers (`1E9,` → 13 bytes)
MAX_INTERNAL_VALUE_BYTES = REWRITE_FACTOR * MAX_VALUE_BYTES + DISPATCH_ENVELOPE_BYTES
MAX_DEPTH = 64  # containers nested deeper than this (the value itself is level 1) are refused

M = TypeVar("M", bound=BaseModel)
_ALL = {**CONTRACT_MODELS, **INTERNAL_MODELS}
_INTERNAL: frozenset[type[BaseModel]] = frozenset(INTERNAL_MODELS.values())


def value_limit(model: type[BaseModel]) -> int:
    """The most bytes a value of `model` may have."""
    return MAX_INTERNAL_VALUE_BYTES if model in _INTERNAL else MAX_VALUE_BYTES


def too_deep(obj: Any, limit: int = MAX_DEPTH, depth: int = 1, path: str = "") -> str | None:
    """The dotted path of the first container nested deeper than `limit` levels (`obj` is
    level `depth`), or None. Iterative: never recursion-limited."""
    stack: list[tuple[Any, int, str]] = [(obj, depth, path)]
    while stack:
        value, level, at = stack.pop()
        if level > limit:
            return at or "(value)"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(item, dict | list):
                stack.append((item, level + 1, f"{at}.{key}" if at else str(key)))
    return None


def _deeper_than(value: dict[str, Any] | list[Any], limit: int) -> bool:
    """Whether `value` (level 1) holds containers nested deeper than `limit` levels: the fast
    test on the hot path; `too_deep` then names where."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, level = stack.pop()
        if level > limit:
            return True
        for item in v.values() if isinstance(v, dict) else v:
            if isinstance(item, dict | list):
                stack.append((item, level + 1))
    return False


@functools.cache
def _free_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` whose values may nest without bound (`dict[str, Any]` and the
    like); typed fields nest only as deep as their models."""
    return tuple(name for name, f in model.model_fields.items() if "Any" in repr(f.annotation))


def check_depth(obj: dict[str, Any] | BaseModel) -> None:
    """Raise `too_deep` naming the field (its top-level name first) if `obj` nests too deep.

    A parsed object is walked whole; a validated model only in its free-form fields."""
    if isinstance(obj, BaseModel):
        path = None
        for name in _free_fields(type(obj)):
            value = getattr(obj, name)
            if isinstance(value, dict | list) and _deeper_than(value, MAX_DEPTH - 1):
                path = too_deep(value, depth=2, path=name)
                break
    else:
        path = too_deep(obj)
    if path is not None:
        field = path.split(".", 1)[0]
        raise InvalidEvent(
            "too_deep", f"{field}: nested more than {MAX_DEPTH} levels deep (at {path[:200]})"
        )


def parse_json(raw: bytes) -> Any:
    """orjson.loads, with a nesting beyond orjson's own limit reported as `too_deep`."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):
            raise InvalidEvent(
                "too_deep", f"(value): nested more than {MAX_DEPTH} levels deep ({exc})"
            ) from exc
        raise InvalidEvent("malformed_json", str(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming every bad field, e.g. `customer_id: Field required; priority: ...`."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(value)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def loads_object(raw: bytes | None, limit: int = MAX_VALUE_BYTES) -> dict[str, Any]:
    """Parse a Kafka value as a JSON object, refusing null, oversized and non-object values."""
    if raw is None:
        raise InvalidEvent("null_value", "value is null")
    if len(raw) > limit:
        raise InvalidEvent("too_large", f"value is {len(raw)} bytes; the limit is {limit} bytes")
    obj = parse_json(raw)
    if not isinstance(obj, dict):
        raise InvalidEvent("malformed_json", f"value is a JSON {type(obj).__name__}, not an object")
    return obj


def check_schema(obj: dict[str, Any], *accepted: str) -> str:
    """Return the value's `schema` if it is one of `accepted`, else raise with the reason."""
    schema = obj.get("schema")
    if not isinstance(schema, str):
        raise InvalidEvent("missing_schema", "schema: Field required (a string such as 'x/v1')")
    if schema in accepted:
        return schema
    name, _, major = schema.rpartition("/")
    if any(a.rpartition("/")[0] == name for a in accepted):
        raise InvalidEvent(
            "unknown_schema_version",
            f"schema {schema!r} has an unknown major version {major!r}; "
            f"accepted: {', '.join(accepted)}",
        )
    raise InvalidEvent("unknown_schema", f"schema {schema!r} is not one of {', '.join(accepted)}")


def decode(raw: bytes | None, model: type[M]) -> M:
    """Parse and validate `raw` as `model`; raise InvalidEvent naming what is wrong.

    Valid values take pydantic-core's JSON path in one call (then a depth check of the
    result); only a value that fails it is taken apart step by step to say precisely why it
    is refused.
    """
    limit = value_limit(model)
    if raw is not None and len(raw) <= limit:
        try:
            decoded = model.model_validate_json(raw)
        except ValidationError:
            pass
        else:
            # no more opening brackets than levels allowed: cannot be too deep (C-fast test)
            if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
                check_depth(decoded)
            return decoded
    obj = loads_object(raw, limit)
    schema_field = model.model_fields["schema_"]
    expected = str(schema_field.annotation.__args__[0])  # type: ignore[union-attr]
    check_schema(obj, expected)
    return validate(obj, model)


def validate(obj: dict[str, Any], model: type[M]) -> M:
    """Validate a parsed value as `model`: its nesting first, then its fields."""
    check_depth(obj)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent("invalid_fields", describe_validation_error(exc)) from exc


def decode_any(raw: bytes | None, *accepted: str) -> BaseModel:
    """Decode a value that may be any of several schemas (e.g. the router's inbox)."""
    limit = max(value_limit(_ALL[a]) for a in accepted if a in _ALL)
    obj = loads_object(raw, limit)
    schema = check_schema(obj, *accepted)
    return validate(obj, cast(type[BaseModel], _ALL[schema]))


def dumps(model: BaseModel) -> bytes:
    """Serialise a model by its wire names (`schema`, `from`), dropping nothing."""
    return model.model_dump_json(by_alias=True).encode()
