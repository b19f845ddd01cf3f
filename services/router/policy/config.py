"""The contact rules as configuration: one YAML file, validated at start-up like the plans.

The shipped presets live beside this file (`presets/cn.yaml`, the contract's default table;
`us.yaml`, Regulation F; `none.yaml`, testing only). `TONGDA_POLICY_PRESET` picks one;
`TONGDA_POLICY_PATH` replaces it with an operator's own file.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator

from services.router.policy.base import RuleConfig
from services.router.policy.business_hours import BusinessHoursConfig
from services.router.policy.frequency import FrequencyConfig
from services.router.policy.hardship import HardshipHoldConfig
from services.router.policy.optout import OptOutConfig
from services.router.policy.quiet_hours import QuietHoursConfig
from services.router.policy.third_party import ThirdPartyConfig
from services.router.policy.window import WindowConfig
from shared.contract.codec import describe_validation_error
from shared.contract.models import _iana_tz
from shared.errors import ConfigError

PRESETS = Path(__file__).with_name("presets")


class PolicyConfig(RuleConfig):
    default_timezone: str = "Asia/Shanghai"
    default_country: str = Field(default="CN", pattern=r"^[A-Z]{2}$")
    opt_out: OptOutConfig = Field(default_factory=OptOutConfig)
    third_party: ThirdPartyConfig = Field(default_factory=ThirdPartyConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    quiet_hours: QuietHoursConfig = Field(default_factory=QuietHoursConfig)
    business_hours: BusinessHoursConfig = Field(default_factory=BusinessHoursConfig)
    frequency: FrequencyConfig = Field(default_factory=FrequencyConfig)
    hardship_hold: HardshipHoldConfig = Field(default_factory=HardshipHoldConfig)

    @field_validator("default_timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _iana_tz(v)


def preset_path(name: str) -> Path:
    return PRESETS / f"{name}.yaml"


def load_policy_config(path: Path) -> PolicyConfig:
    """Read and validate a contact-rules file; raise ConfigError naming file and fields."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read contact rules {path}: {exc}") from exc
    try:
        return PolicyConfig.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(
            f"invalid contact rules {path}: {describe_validation_error(exc)}"
        ) from exc
