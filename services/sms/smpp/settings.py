"""The SMPP provider's settings, from `TONGDA_SMPP_*` variables (frozen).

The password comes from TONGDA_SMPP_PASSWORD or, better, from a mounted secret file named by
TONGDA_SMPP_PASSWORD_FILE (the file wins); it is a SecretStr and never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

ENV_PREFIX = "TONGDA_SMPP_"


class SmppSettings(BaseSettings):
    """One SMSC account: where it is, how to bind, and the contract's limits."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 2775
    system_id: str = Field("", max_length=15)  # SMPP's C-octet string limits
    password: SecretStr = SecretStr("")
    password_file: Path | None = None
    system_type: str = Field("", max_length=12)
    source_addr: str = Field("TONGDA", max_length=20)  # the sender id or short code borrowers see
    source_ton: int = 5  # alphanumeric; 1 (international) for a number
    source_npi: int = 0
    dest_ton: int = 1  # international: recipients are E.164, sent without the plus
    dest_npi: int = 1  # ISDN (E.164)
    binds: int = Field(1, ge=1)  # transceiver sessions kept bound
    window: int = Field(10, ge=1)  # submit_sm in flight per session
    enquire_link_s: float = 30.0
    response_timeout_s: float = 10.0  # for any response (bind, submit, enquire_link)
    connect_timeout_s: float = 5.0
    bind_wait_s: float = 2.0  # send() waits this long for a bound session, then fails
    rebind_min_s: float = 0.5  # backoff after a dropped or refused bind, doubling ...
    rebind_max_s: float = 30.0  # ... up to this
    rate_per_s: float = 0.0  # the account's contracted submits/s, shared by all replicas; 0: none
    rate_burst: int = 0  # tokens the bucket holds; 0: a tenth of a second's worth (at least 1)
    rate_max_wait_s: float = 10.0  # longer than this in the bucket's queue: the send fails
    throttle_backoff_s: float = 1.0  # after ESME_RTHROTTLED / ESME_RMSGQFUL, for every replica
    registered_delivery: int = 1  # ask for a final receipt, success or failure
    parts_ttl_s: int = 3 * 24 * 3600  # how long a long text's part ids are kept for receipts

    @model_validator(mode="before")
    @classmethod
    def _password_from_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("password_file"):
            path = Path(data["password_file"])
            try:
                secret = path.read_text().strip()
            except OSError as exc:
                raise ValueError(f"cannot read the password file: {exc.strerror}") from None
            data = {**data, "password": secret}
        return data

    @field_validator("password")
    @classmethod
    def _password_fits(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode("latin-1", errors="replace")) > 8:
            raise ValueError("SMPP 3.4 passwords are at most 8 characters")
        return value

    @property
    def account(self) -> str:
        """host:port/system_id: names the account in logs and the rate limit's key."""
        return f"{self.host}:{self.port}/{self.system_id}"


def load_smpp_settings(**overrides: Any) -> SmppSettings:
    """Settings from the environment; a bad value is a ConfigError naming its variable."""
    try:
        return SmppSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'__'.join(str(p) for p in e['loc']).upper() or 'PASSWORD_FILE'}: "
            f"{e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise ConfigError(f"invalid SMPP configuration: {problems}") from None
