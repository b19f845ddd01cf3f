"""The sandboxed Jinja2 environments: immutable sandbox, strict undefined variables that raise
MissingVariable naming the variable, the filters; one for text parts, one with autoescape for
HTML parts."""

from __future__ import annotations

from functools import cache, partial
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateRuntimeError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from shared.templates.filters import FILTERS


class MissingVariable(UndefinedError):
    """A template needs a variable the data does not have."""

    def __init__(self, variable: str, where: str = "") -> None:
        self.variable = variable
        self.where = where
        super().__init__(f"missing variable '{variable}'" + (f" ({where})" if where else ""))


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


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        autoescape=autoescape,
        undefined=_Undefined,
        trim_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(FILTERS)
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
def compile_source(source: str, html: bool) -> Template:
    """A template source compiled once, for the HTML or the text environment."""
    return (html_environment() if html else text_environment()).from_string(source)
