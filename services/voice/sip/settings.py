"""The SIP provider's settings, from `TONGDA_SIP_*` variables (docs/providers-voice.md).

The digest password is read from `TONGDA_SIP_PASSWORD` or from the file named by
`TONGDA_SIP_PASSWORD_FILE` (a mounted Secret), never both; it is never logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

PREFIX = "TONGDA_SIP_"


class SipSettings(BaseSettings):
    """The SIP proxy (trunk), local ports, credentials, timers, TTS voices and call limits."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    proxy_host: str = Field(min_length=1)  # where every request goes (outbound proxy, trunk)
    proxy_port: int = Field(default=5060, ge=1, le=65535)
    domain: str | None = None  # the Request-URI's host: sip:<number>@<domain>; default proxy_host
    strip_plus: bool = False  # sip:8613800138000@... rather than sip:+8613800138000@...
    from_uri: str = "sip:tongda@localhost"  # the From header's URI (our identity)
    display_name: str | None = None
    username: str | None = None  # digest authentication (401/407), with password
    password: SecretStr | None = None
    password_file: Path | None = None
    local_host: str = "0.0.0.0"  # where the SIP and RTP sockets bind
    local_port: int = Field(default=5060, ge=0, le=65535)  # 0: any free port
    # The address the far end reaches us on (Via, Contact, SDP). Default: the local address
    # the kernel picks to reach the proxy.
    advertised_host: str | None = None
    rtp_port_min: int = Field(default=10000, ge=1024, le=65534)
    rtp_port_max: int = Field(default=20000, ge=1024, le=65535)
    codec: Literal["PCMU", "PCMA"] = "PCMU"  # offered first; the answer chooses
    dtmf_payload_type: int = Field(default=101, ge=96, le=127)
    t1_s: float = Field(default=0.5, gt=0)  # RFC 3261 T1 (retransmissions); timeouts are 64*T1
    ring_timeout_s: float = Field(default=30.0, gt=0)  # INVITE sent → CANCEL when unanswered
    dtmf_wait_s: float = Field(default=5.0, ge=0)  # after the message, wait this long for 1/2
    max_call_s: float = Field(default=300.0, gt=0)  # an answered call is hung up after this
    max_calls: int = Field(default=32, ge=1)  # concurrent calls; more wait their turn
    # Answering-machine heuristic (docs/providers-voice.md): listen at answer; a greeting of
    # at least `amd_machine_speech_s` of speech → voicemail; speech that stops (a gap of
    # `amd_silence_s`) before that, or no speech for `amd_initial_silence_s` → a person.
    amd_enabled: bool = True
    amd_speech_rms: float = Field(default=500.0, gt=0)  # frame RMS (16-bit) counted as speech
    amd_initial_silence_s: float = Field(default=1.5, gt=0)
    amd_silence_s: float = Field(default=0.8, gt=0)
    amd_machine_speech_s: float = Field(default=2.5, gt=0)
    amd_max_greeting_s: float = Field(default=20.0, gt=0)  # voicemail: wait for the beep this long
    tts_voices: dict[str, str] = {"zh": "cmn", "en": "en-us"}  # language → espeak-ng voice
    tts_default_language: str = "en"
    tts_speed_wpm: int = Field(default=150, ge=80, le=450)
    tts_cache_size: int = Field(default=256, ge=1)
    tts_timeout_s: float = Field(default=20.0, gt=0)
    espeak_path: str = "espeak-ng"
    sox_path: str = "sox"

    @model_validator(mode="before")
    @classmethod
    def _password_file(cls, data: Any) -> Any:
        """`password_file` → `password`."""
        if not isinstance(data, dict) or not data.get("password_file"):
            return data
        data = dict(data)
        if data.get("password"):
            raise ValueError(f"set {PREFIX}PASSWORD or {PREFIX}PASSWORD_FILE, not both")
        path = data["password_file"]
        try:
            data["password"] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"password_file: cannot read {path}: {exc.strerror}") from None
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SipSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (digest authentication)")
        if self.rtp_port_max <= self.rtp_port_min:
            raise ValueError("rtp_port_max must be above rtp_port_min")
        if not self.from_uri.startswith(("sip:", "sips:")):
            raise ValueError("from_uri: a SIP URI like sip:tongda@bank.example is required")
        if self.tts_default_language not in self.tts_voices:
            raise ValueError("tts_default_language must be one of tts_voices' languages")
        return self

    @property
    def request_domain(self) -> str:
        return self.domain or self.proxy_host


def load_sip_settings(**overrides: Any) -> SipSettings:
    """Read `TONGDA_SIP_*`; raise ConfigError naming each bad or missing variable."""
    try:
        return SipSettings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            where = "__".join(str(p) for p in err["loc"]).upper()
            name = f"{PREFIX}{where}" if where else f"{PREFIX}*"
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid SIP configuration: " + "; ".join(problems)) from None
