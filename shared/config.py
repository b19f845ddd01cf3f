"""Typed settings, one frozen class per service, read from `TONGDA_*` environment variables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.clock import Clock

DEFAULT_API_TOKEN = "change-me"
DEFAULT_ADDRESS_HASH_KEY = "tongda-dev-address-key"


class Topics(BaseModel):
    """Topic names: the contract's defaults plus tongda's internal topics."""

    model_config = ConfigDict(frozen=True)

    requested: str = "notifications.requested"
    profiles: str = "customers.profiles"
    inquiries: str = "inquiries.received"
    status: str = "notifications.status"
    audit: str = "comms.audit"
    escalated: str = "inquiries.escalated"
    resolved: str = "inquiries.resolved"
    feedback: str = "inquiries.feedback"
    preferences: str = "customers.preferences"
    deadletter: str = "notifications.deadletter"
    router_inbox: str = "tongda.router.inbox"
    dispatch_prefix: str = "tongda.dispatch."

    def dispatch(self, channel: str) -> str:
        return f"{self.dispatch_prefix}{channel}"


class CommonSettings(BaseSettings):
    """What every tongda service reads. Nested values use `__`, e.g. TONGDA_TOPICS__AUDIT."""

    model_config = SettingsConfigDict(
        env_prefix="TONGDA_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_client_id: str = "tongda"
    kafka_request_timeout_ms: int = 30_000
    kafka_fetch_max_wait_ms: int = 10
    kafka_max_poll_records: int = 5_000  # bigger batches amortise per-batch work (bench)
    kafka_max_request_bytes: int = 8 * 1024 * 1024
    kafka_topic_partitions: int = 4
    kafka_session_timeout_ms: int = 6_000  # a consumer joins its group in ~half of this
    kafka_leave_group_on_close: bool = Field(
        default=False,
        description="whether a consumer that stops sends LeaveGroup (Java's internal "
        "`internal.leave.group.on.close`; Kafka Streams also defaults it to false): without "
        "it the group moves a stopped process's partitions once its session times out "
        "(`kafka_session_timeout_ms`), which every broker handles alike; a LeaveGroup from "
        "the group's leader during a rebalance wedges a Tansu 0.6 group for good "
        '(docs/reliability.md, "The router start that hung")',
    )
    kafka_offset_gap_wait_s: float = Field(
        default=10.0,
        description="how long a consumer of a topic where every offset holds a record "
        "(tongda's own inbox and dispatch topics, and `notifications.requested` when "
        "`kafka_offset_gap_check_requests` is on) holds a partition back at an offset the "
        "broker skipped, fetching it again, before it logs an error and goes on without it; "
        "Tansu 0.6 shows a later record before an earlier one is written (docs/reliability.md, "
        '"Offsets a fetch skipped"); Apache Kafka never does',
    )
    kafka_offset_gap_check_requests: bool = Field(
        default=False,
        description="also hold back at skipped offsets on `notifications.requested`: only for "
        "a broker with Tansu's defect and producers that never write transaction markers "
        "(which take offsets of their own); devstack turns it on",
    )
    kafka_replication_factor: int = 1
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="how every Kafka client (producers, consumers, admin, faust) talks to the "
        "brokers: `SSL` and `SASL_SSL` encrypt and check the brokers' certificates; `SASL_*` "
        'authenticate with `kafka_sasl_*` (docs/operations.md, "TLS, SASL and Redis ACL users")',
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512",
        description="the SASL mechanism with `SASL_PLAINTEXT`/`SASL_SSL` (PLAIN sends the "
        "password as is: only over `SASL_SSL`)",
    )
    kafka_sasl_username: str = Field(
        default="", description="the SASL user; required with a `SASL_*` protocol"
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        description="the SASL user's password (from a Secret); required with a `SASL_*` "
        "protocol; never logged",
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the brokers' certificates; unset: the "
        "system's trusted CAs (`SSL`/`SASL_SSL` only)",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None,
        description="PEM client certificate (chain) for mutual TLS; it may hold the key too",
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None,
        description="PEM private key of `kafka_ssl_certfile` when kept in its own file "
        "(unencrypted)",
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True,
        description="check that a broker's certificate names the host connected to; turn off "
        "only for brokers reached by an address their certificate does not list",
    )
    # The URL may carry a password (redis://user:pass@host): never in repr, never logged;
    # prefer redis_username / redis_password.
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        repr=False,
        description="`redis://host:port/db`, or `rediss://` for TLS; Redis Cluster: "
        "`redis+cluster://host1:port1,host2:port2` (or `rediss+cluster://`; any of the "
        "cluster's nodes, the others are discovered), or a `redis://` URL of one node with "
        "`redis_cluster`. Credentials go in `redis_username`/`redis_password`, not in the "
        "URL (docs/operations.md, \"Redis Cluster\").",
    )
    redis_cluster: bool = Field(
        default=False,
        description="Redis is a Redis Cluster (also on with a `redis+cluster://` URL): each "
        "command goes to the node of its hash slot",
    )
    redis_key_groups: int = Field(
        default=64,
        ge=0,
        description="the router's customer groups: every key of a customer carries the hash "
        "tag `{g<n>}` of its group (crc32 of the customer id modulo this), so each atomic "
        "call touches one Redis Cluster slot. Changing it moves every key: a migration "
        "(docs/operations.md). 0: no hash tags, the layout of tongda before groups, for a "
        "single Redis only.",
    )
    redis_username: str = Field(
        default="",
        description="the Redis ACL user (`ACL SETUSER`); empty: `default` when a password is set",
    )
    redis_password: SecretStr | None = Field(
        default=None,
        description="the Redis ACL user's password (from a Secret); never logged",
    )
    redis_tls: bool = Field(
        default=False,
        description="connect to Redis with TLS (also on with a `rediss://` URL); the server's "
        "certificate is always checked",
    )
    redis_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed Redis's certificate; unset: the "
        "system's trusted CAs (TLS only)",
    )
    redis_ssl_certfile: Path | None = Field(
        default=None,
        description="PEM client certificate for Redis servers that require one "
        "(`tls-auth-clients yes`)",
    )
    redis_ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of `redis_ssl_certfile` (unencrypted)"
    )
    redis_ssl_check_hostname: bool = Field(
        default=True, description="check that Redis's certificate names the host connected to"
    )
    redis_socket_timeout_s: float = 5.0
    redis_connect_timeout_s: float = 5.0
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
    drain_timeout_s: float = 20.0
    stall_after_s: float = Field(
        default=30.0,
        gt=0,
        description="`/readyz` answers 503 (and `tongda_consume_loop_stalled` is 1) when the "
        "consume loop completed no batch for this many seconds while records wait "
        "(docs/reliability.md).",
    )
    group_stuck_after_s: float = Field(
        default=60.0,
        gt=0,
        description="`/readyz` answers 503 (and `tongda_consumer_group_stuck` is 1) when a "
        "consumer has waited this many seconds for its group to assign it partitions, at "
        "start or after a rebalance began (docs/reliability.md).",
    )
    http_header_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="An HTTP connection that has not sent a complete request head this many "
        "seconds after connecting (or after its previous response) is closed: slow-header "
        "(slowloris) and idle clients.",
    )
    topics: Topics = Field(default_factory=Topics)
    faust_app_id: str = "tongda-router"  # the router's faust app; its leader topic is ours too
    key_prefix: str = "tongda:"
    # HMAC key for sender addresses in Kafka keys and Redis key names (shared/addresses.py).
    # Set it in production (from a Secret): the default only suits a laptop.
    address_hash_key: SecretStr = SecretStr(DEFAULT_ADDRESS_HASH_KEY)
    signing_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="HMAC-SHA256 keys signing tongda's internal records (dispatch topics, router "
        'inbox), by key id, as JSON: `{"2026-11": "<secret>", "2026-05": "<old>"}`; '
        "every key listed is accepted, `signing_key_id` signs. Required: a service refuses to "
        "start without one (`make up` generates one; docs/reliability.md)",
    )
    signing_key_id: str = Field(
        default="",
        description="the id, in `signing_keys`, of the key that signs; empty: the only key "
        "when there is exactly one",
    )
    templates_path: Path | None = Field(
        default=None,
        description="a directory of message templates (config.yaml and one <locale>.yaml per "
        "locale) replacing the shipped `shared/templates/` ones (docs/templates.md)",
    )
    # The clock (shared/clock.py): real by default; a demo runs a simulated one, the same
    # three values in every process of the stack.
    time_scale: float = Field(default=1.0, gt=0)  # real seconds per simulated second
    clock_start: AwareDatetime | None = None  # the simulated instant at clock_origin_epoch_s
    clock_origin_epoch_s: float = 0.0

    def clock(self) -> Clock:
        """The clock these settings describe."""
        return Clock(self.time_scale, self.clock_start, self.clock_origin_epoch_s)


class RouterSettings(CommonSettings):
    """The router: HTTP API, routing plans, state retention, scheduler."""

    http_port: int = 8080
    api_token: SecretStr = SecretStr(DEFAULT_API_TOKEN)  # the router refuses to start with it
    plans_path: Path | None = None  # None: the shipped services/router/plans.yaml
    intents_path: Path | None = Field(
        default=None,
        description="YAML file of inquiry intent rules; unset = the shipped "
        "`services/router/intents/rules/intents.yaml` (docs/inquiries.md).",
    )
    policy_preset: Literal["cn", "us", "none"] = "cn"  # the shipped contact rules to use
    policy_path: Path | None = None  # a contact-rules YAML file replacing the preset
    min_real_timeout_s: float = 3.0  # under a simulated clock, step timeouts last at least this
    consumer_group: str = "tongda-router-batch"  # faust itself uses the app id
    faust_datadir: Path = Path("/tmp/tongda-router-faust")
    retention_s: int = 7 * 24 * 3600
    timeline_max_records: int = 500
    scheduler_interval_s: float = 0.2
    scheduler_lease_s: float = 30.0
    scheduler_batch: int = 500
    gc_gen0_threshold: int = 20_000  # Python's default 700 makes GC a third of the hot path


class ChannelSettings(CommonSettings):
    """A channel service (sms, email, push, voice) and its provider."""

    channel: Literal["sms", "email", "push", "voice"] = "sms"
    # The provider's name, e.g. "sandbox" (the default); each channel's build_provider() lists
    # the names it knows and refuses others (exit 2).
    provider: str = "sandbox"
    consumer_group: str = ""  # "" → tongda-<channel>
    max_in_flight: int = 256
    dedupe_ttl_s: int = 7 * 24 * 3600
    sandbox_time_scale: float = 1.0  # multiplies the sandbox's realistic delays
    sandbox_ledger: bool = True  # record every send reaching the sandbox in Redis
    send_timeout_s: float = 30.0  # a provider's send() taking longer is a `failed` attempt
    receipt_timeout_s: float = 3600.0  # forget (in memory) an accepted attempt never reported
    max_sms_segments: int = Field(
        default=3,
        ge=1,
        description="the sms service logs every SMS template's length and segments at "
        "start-up, a WARNING for each over this many (docs/templates.md)",
    )

    @property
    def group(self) -> str:
        return self.consumer_group or f"tongda-{self.channel}"


S = TypeVar("S", bound=CommonSettings)


def load_settings(cls: type[S], service: str, **overrides: Any) -> S:
    """Read settings from the environment; on a bad value print which TONGDA_* variable is
    wrong and exit 2 (a configuration error), rather than a traceback."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            name = "TONGDA_" + "__".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {name}: {err['msg']}")
        print(f"{service}: invalid configuration:\n" + "\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
