"""The template files: config.yaml and one <locale>.yaml per locale, loaded and checked once.

A locale file maps a template name (a notification type such as `repayment_due`, or a message
such as `missed_call`, `reply.amount_due`) to its text per channel. Every template has at
least `sms` and `email`; `push` and `voice` fall back to the SMS text (push titled with the
email subject). `generic` must exist in every locale and have all four channels.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.contract.models import Category
from shared.errors import ConfigError

GENERIC = "generic"
M = TypeVar("M", bound=BaseModel)
LOCALE_FILE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*\.yaml$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmailTemplate(_Strict):
    subject: str
    text: str
    html: str | None = None  # rendered with autoescaping; None: the text, escaped, as paragraphs


class PushTemplate(_Strict):
    title: str
    body: str


class TemplateSet(_Strict):
    """One template in one locale: its text per channel."""

    sms: str
    email: EmailTemplate
    push: PushTemplate | None = None
    voice: str | None = None


class Formats(_Strict):
    money: Literal["code", "name"] = "code"
    money_names: dict[str, str] = Field(default_factory=dict)
    date: str = "yyyy-MM-dd"
    datetime: str = "yyyy-MM-dd HH:mm"


class Footer(_Strict):
    categories: list[Category]
    text: dict[str, str]  # locale → template


class EmailLayout(_Strict):
    text: str
    html: str


class Sample(_Strict):
    category: Category = "transactional"
    data: dict[str, Any] = Field(default_factory=dict)


class CatalogConfig(_Strict):
    default_locale: str
    brand: dict[str, dict[str, str]]
    formats: dict[str, Formats]
    sms_signature: dict[str, str]
    footers: dict[Literal["sms", "email"], Footer]
    email_layout: dict[str, EmailLayout]
    samples: dict[str, Sample] = Field(default_factory=dict)


class Catalog:
    """Every template by locale and name, with the settings that go around them."""

    def __init__(self, config: CatalogConfig, templates: dict[str, dict[str, TemplateSet]]):
        self.config = config
        self.templates = templates  # locale → name → template
        self.locales = sorted(templates)
        self.names = sorted({name for by_name in templates.values() for name in by_name})

    def resolve_locale(self, locale: str | None) -> str:
        """The locale for `locale`: exact, else the same language, else the default locale."""
        if locale in self.templates:
            return locale
        language = (locale or "").split("-")[0].lower()
        default = self.config.default_locale
        return next((lc for lc in self.locales if lc.split("-")[0] == language), default)

    def resolve_name(self, name: str) -> str:
        """`name` if any locale has it, else the generic template."""
        return name if name in self.names else GENERIC

    def get(self, name: str, locale: str) -> TemplateSet:
        """The template `name` in `locale`, else in the default locale (both resolved)."""
        found = self.templates[locale].get(name)
        return found or self.templates[self.config.default_locale][name]


def load_catalog(directory: Path | None = None) -> Catalog:
    """Read and check the template files in `directory` (None: those shipped in this package);
    ConfigError names the file and the place."""
    root: Traversable = directory if directory is not None else resources.files("shared.templates")
    where = f"{directory}/" if directory is not None else ""
    try:
        config = _parse(_read(root, "config.yaml"), f"{where}config.yaml", CatalogConfig)
        templates: dict[str, dict[str, TemplateSet]] = {}
        for entry in sorted(root.iterdir(), key=lambda e: e.name):
            if entry.name == "config.yaml" or not LOCALE_FILE.match(entry.name):
                continue
            raw = yaml.safe_load(_read(root, entry.name)) or {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}{entry.name}: expected a mapping of template names")
            templates[entry.name.removesuffix(".yaml")] = {
                str(name): _parse_obj(body, f"{where}{entry.name}: {name}", TemplateSet)
                for name, body in raw.items()
            }
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {exc}") from None
    _check(config, templates)
    return Catalog(config, templates)


def _read(root: Traversable, name: str) -> str:
    try:
        return root.joinpath(name).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{root}/{name}: cannot read: {exc.strerror or exc}") from None


def _check(config: CatalogConfig, templates: dict[str, dict[str, TemplateSet]]) -> None:
    default = config.default_locale
    if default not in templates:
        raise ConfigError(f"config.yaml: default_locale {default}: no such file")
    for locale, by_name in templates.items():
        for name in by_name.keys() - templates[default].keys():  # the fallback of every locale
            raise ConfigError(f"{locale}.yaml: {name}: not in {default}.yaml, the default locale")
    for locale, by_name in templates.items():
        generic = by_name.get(GENERIC)
        if generic is None or generic.push is None or generic.voice is None:
            raise ConfigError(f"{locale}.yaml: {GENERIC}: needs sms, email, push and voice")
        settings: dict[str, dict[str, Any]] = {
            "brand": config.brand,
            "formats": config.formats,
            "sms_signature": config.sms_signature,
            "email_layout": config.email_layout,
            **{f"footers.{ch}.text": f.text for ch, f in config.footers.items()},
        }
        for field, per_locale in settings.items():
            if locale not in per_locale:
                raise ConfigError(f"config.yaml: {field}: no entry for locale {locale}")


def _parse(text: str, where: str, model: type[M]) -> M:
    return _parse_obj(yaml.safe_load(text), where, model)


def _parse_obj(raw: object, where: str, model: type[M]) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: {field}: {first['msg']}") from None


_active: list[Catalog] = []  # the catalog in use: set by use_templates(), else the shipped one


@cache
def _shipped() -> Catalog:
    return load_catalog()


def use_templates(directory: Path | None) -> Catalog:
    """Load the templates of `directory` (None: the shipped ones), check them and render with
    them from now on (`TONGDA_TEMPLATES_PATH`, at a service's start)."""
    loaded = load_catalog(directory) if directory is not None else _shipped()
    _active[:] = [loaded]
    return loaded


def catalog() -> Catalog:
    """The catalog in use; the shipped one unless use_templates() chose another."""
    return _active[0] if _active else _shipped()
