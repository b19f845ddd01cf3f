"""The SMTP provider's settings, from `TONGDA_SMTP_*` variables (docs/providers-email.md).

Secrets (the SMTP password, the inbound webhook's secret) are read either from a variable
or from a mounted file named by `<VARIABLE>_FILE` (a Kubernetes Secret volume), never both.
"""

from __future__ import annotations

import ssl
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

PREFIX = "TONGDA_SMTP_"
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def _mailbox(value: str) -> str:
    """`value` if it is a plain ASCII address `local@domain.tld`, else ValueError."""
    _, addr = parseaddr(value)
    local, at, domain = addr.rpartition("@")
    if not at or not local or "." not in domain or not addr.isascii() or " " in addr:
        raise ValueError("an address like name@bank.example is required")
    return addr


class SmtpSettings(BaseSettings):
    """The SMTP relay, the addresses messages carry, and the inbound (bounce/reply) intake."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 587, 465 or 25 by security
    security: Literal["starttls", "tls", "none"] = "starttls"
    tls_verify: bool = True
    ca_file: Path | None = None  # a CA bundle for a private relay; default: the system's
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    helo_name: str | None = None  # EHLO name; default: this host's FQDN
    timeout_s: float = Field(default=15.0, gt=0)  # one message, connection included
    pool_size: int = Field(default=4, ge=1, le=64)
    max_messages_per_connection: int = Field(default=100, ge=1)
    noop_after_s: float = Field(default=5.0, ge=0)  # check an idle connection before reuse

    from_address: str  # the From header, e.g. "Tongda Bank <noreply@bank.example>"
    bounce_address: str | None = None  # MAIL FROM (VERP); default: bounces@<From's domain>
    reply_to: str | None = None  # the address borrowers reply to; default: no Reply-To
    list_unsubscribe: str | None = None  # List-Unsubscribe template, `{token}` replaced
    message_id_domain: str | None = None  # right of the @ in Message-IDs; default From's
    # An attempt is `delivered` once accepted (250) and no bounce came within this window.
    bounce_window_s: float = Field(default=120.0, gt=0)
    reply_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)  # how long a reply finds its message

    inbound_host: str = "0.0.0.0"
    inbound_port: int | None = Field(default=None, ge=0, le=65535)  # None: no SMTP listener
    inbound_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    webhook_secret: SecretStr | None = None  # None: no POST /webhooks/email/inbound
    webhook_secret_file: Path | None = None

    @field_validator("from_address")
    @classmethod
    def _from(cls, value: str) -> str:
        name, addr = parseaddr(value)
        _mailbox(value)
        return str(Address(display_name=name, addr_spec=addr)) if name else addr

    @field_validator("bounce_address", "reply_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return None if value is None else _mailbox(value)

    @field_validator("list_unsubscribe")
    @classmethod
    def _unsubscribe(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value or not value.isascii()):
            raise ValueError("one ASCII line, e.g. <https://bank.example/unsubscribe/{token}>")
        return value

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """`password_file` / `webhook_secret_file` → `password` / `webhook_secret`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in ("password", "webhook_secret"):
            path = data.get(f"{name}_file")
            if not path:
                continue
            if data.get(name):
                var = f"{PREFIX}{name.upper()}"
                raise ValueError(f"set {var} or {var}_FILE, not both")
            try:
                data[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(
                    f"{PREFIX}{name.upper()}_FILE: cannot read {path}: {exc.strerror}"
                ) from None
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SmtpSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError(f"{PREFIX}USERNAME and {PREFIX}PASSWORD go together (AUTH)")
        if self.username is not None and self.security == "none":
            raise ValueError(f"AUTH needs TLS: set {PREFIX}SECURITY to starttls or tls")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"{PREFIX}CA_FILE: {self.ca_file} is not a file")
        return self

    @property
    def server_port(self) -> int:
        """The relay's port: as set, else the usual one for `security`."""
        return self.port or DEFAULT_PORTS[self.security]

    @property
    def from_domain(self) -> str:
        return parseaddr(self.from_address)[1].rpartition("@")[2].lower()

    @property
    def envelope_from(self) -> str:
        """The bounce address VERP tokens are added to (`local+token@domain`)."""
        return self.bounce_address or f"bounces@{self.from_domain}"

    @property
    def id_domain(self) -> str:
        return self.message_id_domain or self.from_domain

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context (None without TLS)."""
        if self.security == "none":
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if not self.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def load_smtp_settings(**overrides: Any) -> SmtpSettings:
    """Read `TONGDA_SMTP_*`; raise ConfigError naming each bad or missing variable."""
    try:
        return SmtpSettings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            where = "__".join(str(p) for p in err["loc"]).upper()
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{PREFIX}{where}: {message}" if where else message)
        raise ConfigError("invalid SMTP configuration: " + "; ".join(problems)) from None
