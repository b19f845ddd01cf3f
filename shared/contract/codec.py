"""Decoding of Kafka values into contract models, with the precise reasons a value is refused."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from shared.contract.models import CONTRACT_MODELS, INTERNAL_MODELS
from shared.errors import InvalidEvent

MAX_VALUE_BYTES = 1024 * 1024  # values over 1 MiB are refused

M = TypeVar("M", bound=BaseModel)
_ALL = {**CONTRACT_MODELS, **INTERNAL_MODELS}


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming every bad field, e.g. `customer_id: Field required; priority: ...`."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(value)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def loads_object(raw: bytes | None) -> dict[str, Any]:
    """Parse a Kafka value as a JSON object, refusing null, oversized and non-object values."""
    if raw is None:
        raise InvalidEvent("null_value", "value is null")
    if len(raw) > MAX_VALUE_BYTES:
        raise InvalidEvent(
            "too_large", f"value is {len(raw)} bytes; the limit is {MAX_VALUE_BYTES} bytes"
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("malformed_json", str(exc)) from exc
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

    Valid values take pydantic-core's JSON path in one call; only a value that fails it is
    taken apart step by step to say precisely why it is refused.
    """
    if raw is not None and len(raw) <= MAX_VALUE_BYTES:
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            pass
    obj = loads_object(raw)
    schema_field = model.model_fields["schema_"]
    expected = str(schema_field.annotation.__args__[0])  # type: ignore[union-attr]
    check_schema(obj, expected)
    return validate(obj, model)


def validate(obj: dict[str, Any], model: type[M]) -> M:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidEvent("invalid_fields", describe_validation_error(exc)) from exc


def decode_any(raw: bytes | None, *accepted: str) -> BaseModel:
    """Decode a value that may be any of several schemas (e.g. the router's inbox)."""
    obj = loads_object(raw)
    schema = check_schema(obj, *accepted)
    return validate(obj, _ALL[schema])


def dumps(model: BaseModel) -> bytes:
    """Serialise a model by its wire names (`schema`, `from`), dropping nothing."""
    return model.model_dump_json(by_alias=True).encode()
