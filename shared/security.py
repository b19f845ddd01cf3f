"""How tongda's clients reach Kafka and Redis securely: TLS, SASL and Redis ACL users.

One place turns the settings (`TONGDA_KAFKA_SECURITY_PROTOCOL`, `TONGDA_KAFKA_SSL_*`,
`TONGDA_KAFKA_SASL_*`, `TONGDA_REDIS_TLS`, `TONGDA_REDIS_SSL_*`, `TONGDA_REDIS_USERNAME`,
`TONGDA_REDIS_PASSWORD`) into client arguments, for every Kafka client (`shared/kafka.py`,
`shared/topics.py`, the router's outbox reader, faust) and the Redis pool (`shared/redis.py`).

A misconfiguration (a file that cannot be read, a SASL protocol without a password, TLS files
given while TLS is off) is a `ConfigError` naming the setting, never the secret; services exit
with status 2 on it. The Kafka `ssl.SSLContext` is built once per process and shared by all its
clients (a rotated certificate is picked up by a restart).
"""

from __future__ import annotations

import functools
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.config import CommonSettings
from shared.errors import ConfigError

TLS_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")


def _readable(path: Path | None, setting: str) -> str | None:
    if path is None:
        return None
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    return str(path)


@functools.lru_cache(maxsize=8)
def _client_context(
    cafile: str | None, certfile: str | None, keyfile: str | None, check_hostname: bool, who: str
) -> ssl.SSLContext:
    """A client context that verifies the server against `cafile` (else the system's CAs),
    presents `certfile`/`keyfile` when given, and checks the host name unless told not to."""
    prefix = f"TONGDA_{who}_SSL"
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    except ssl.SSLError as exc:
        raise ConfigError(f"{prefix}_CAFILE: no usable CA certificate in {cafile}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if certfile is not None:
        try:
            context.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{prefix}_CERTFILE/{prefix}_KEYFILE: not a certificate and its key: {exc}"
            ) from None
    return context


def kafka_ssl_context(settings: CommonSettings) -> ssl.SSLContext | None:
    """The context every Kafka client of this process uses; None without TLS."""
    s = settings
    files = {
        "TONGDA_KAFKA_SSL_CAFILE": s.kafka_ssl_cafile,
        "TONGDA_KAFKA_SSL_CERTFILE": s.kafka_ssl_certfile,
        "TONGDA_KAFKA_SSL_KEYFILE": s.kafka_ssl_keyfile,
    }
    if s.kafka_security_protocol not in TLS_PROTOCOLS:
        given = [name for name, value in files.items() if value is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} set but TONGDA_KAFKA_SECURITY_PROTOCOL is "
                f"{s.kafka_security_protocol}: use SSL or SASL_SSL"
            )
        return None
    if s.kafka_ssl_keyfile is not None and s.kafka_ssl_certfile is None:
        raise ConfigError("TONGDA_KAFKA_SSL_KEYFILE set without TONGDA_KAFKA_SSL_CERTFILE")
    paths = [_readable(value, name) for name, value in files.items()]
    return _client_context(paths[0], paths[1], paths[2], s.kafka_ssl_check_hostname, "KAFKA")


def kafka_client_options(settings: CommonSettings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (producer, consumer, admin): the bootstrap
    servers plus the security protocol, its SSL context and SASL credentials."""
    s = settings
    options: dict[str, Any] = {
        "bootstrap_servers": s.kafka_bootstrap,
        "security_protocol": s.kafka_security_protocol,
    }
    context = kafka_ssl_context(s)
    if context is not None:
        options["ssl_context"] = context
    if s.kafka_security_protocol in SASL_PROTOCOLS:
        if not s.kafka_sasl_username:
            raise ConfigError(
                f"TONGDA_KAFKA_SASL_USERNAME is not set (TONGDA_KAFKA_SECURITY_PROTOCOL="
                f"{s.kafka_security_protocol})"
            )
        password = s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else ""
        if not password:
            raise ConfigError(
                f"TONGDA_KAFKA_SASL_PASSWORD is not set (TONGDA_KAFKA_SECURITY_PROTOCOL="
                f"{s.kafka_security_protocol})"
            )
        options.update(
            sasl_mechanism=s.kafka_sasl_mechanism,
            sasl_plain_username=s.kafka_sasl_username,
            sasl_plain_password=password,
        )
    return options


def faust_broker_credentials(settings: CommonSettings) -> Any:
    """faust's `broker_credentials` for these settings (None: plaintext): the same SSL
    context and SASL user as the plain aiokafka clients."""
    import faust

    s = settings
    options = kafka_client_options(s)  # validates
    context = options.get("ssl_context")
    if s.kafka_security_protocol in SASL_PROTOCOLS:
        return faust.SASLCredentials(
            username=s.kafka_sasl_username,
            password=options["sasl_plain_password"],
            ssl_context=context,
            mechanism=s.kafka_sasl_mechanism,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def redis_uses_tls(settings: CommonSettings) -> bool:
    return settings.redis_tls or urlsplit(settings.redis_url).scheme in ("rediss", "rediss+cluster")


def redis_connection_options(settings: CommonSettings) -> dict[str, Any]:
    """Keyword arguments for redis-py's pool beside the URL: TLS (with the server's
    certificate checked) and the ACL user. Credentials belong in `redis_username` /
    `redis_password`; a URL that also carries a password is refused as ambiguous."""
    from redis.asyncio.connection import SSLConnection

    s = settings
    options: dict[str, Any] = {}
    url = urlsplit(s.redis_url)
    password = s.redis_password.get_secret_value() if s.redis_password else ""
    if password and url.password:
        raise ConfigError(
            "TONGDA_REDIS_PASSWORD set while TONGDA_REDIS_URL carries a password too: keep one"
        )
    if s.redis_username and not password:
        raise ConfigError("TONGDA_REDIS_USERNAME set without TONGDA_REDIS_PASSWORD")
    if password:
        options["password"] = password
        if s.redis_username:
            options["username"] = s.redis_username
    files = {
        "TONGDA_REDIS_SSL_CAFILE": s.redis_ssl_cafile,
        "TONGDA_REDIS_SSL_CERTFILE": s.redis_ssl_certfile,
        "TONGDA_REDIS_SSL_KEYFILE": s.redis_ssl_keyfile,
    }
    if not redis_uses_tls(s):
        given = [name for name, value in files.items() if value is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} set but Redis TLS is off: set TONGDA_REDIS_TLS=true or "
                "use a rediss:// URL"
            )
        return options
    if s.redis_ssl_keyfile is not None and s.redis_ssl_certfile is None:
        raise ConfigError("TONGDA_REDIS_SSL_KEYFILE set without TONGDA_REDIS_SSL_CERTFILE")
    cafile, certfile, keyfile = (_readable(value, name) for name, value in files.items())
    if url.scheme not in ("rediss", "rediss+cluster"):
        options["connection_class"] = SSLConnection
    options.update(
        ssl_cert_reqs="required",
        ssl_ca_certs=cafile,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_check_hostname=s.redis_ssl_check_hostname,
        ssl_min_version=ssl.TLSVersion.TLSv1_2,
    )
    return options


def check_connection_settings(settings: CommonSettings) -> None:
    """Raise ConfigError for a Kafka or Redis security misconfiguration, before connecting."""
    kafka_client_options(settings)
    redis_connection_options(settings)
