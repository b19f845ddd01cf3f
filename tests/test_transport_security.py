"""TLS and SASL for Kafka, TLS and ACL users for Redis, from configuration (shared/security.py).

Against real servers started here: Debian's redis-server (built with TLS) serving TLS only,
with an ACL user and the `default` user off; Tansu behind a TLS terminator whose port it
advertises (tests/tls_support.py says why: the Tansu binary serves plaintext whatever its
`--cert` says), requiring client certificates (mutual TLS). For SASL these tests check what
tongda hands to aiokafka and to faust; the SASL exchange itself, on the wire with each
mechanism, is tested in tests/test_kafka_sasl.py (a SASL peer in front of Tansu).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError

from services.router.app import create_app
from services.router.intents import Classifier
from services.router.plans import load_plans
from services.router.policy import load_policy
from shared.config import CommonSettings, RouterSettings
from shared.errors import ConfigError
from shared.kafka import make_consumer, make_producer
from shared.redis import make_redis
from shared.security import (
    check_connection_settings,
    faust_broker_credentials,
    kafka_client_options,
    kafka_ssl_context,
)
from shared.topics import ensure_topics, missing_topics, topic_specs
from tests.router_process import a_request_comes_out_as_a_dispatch, router_process
from tests.signing_keys import SIGNING, SIGNING_ENV
from tests.tls_support import Pki, TlsBroker, TlsRedis, make_pki
from tools.devstack import REPO_ROOT

REDIS_PASSWORD = "redis-acl-password-7f3c"
SASL_PASSWORD = "sasl-password-91d2"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA that signed nothing our servers present."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), "some other CA")


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    broker = TlsBroker(pki, tmp_path_factory.mktemp("tls-broker") / "tansu.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    server = TlsRedis(pki, tmp_path_factory.mktemp("tls-redis") / "redis.log", REDIS_PASSWORD)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def kafka_tls(broker: TlsBroker, pki: Pki, **overrides: Any) -> CommonSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": pki.ca,
        "kafka_ssl_certfile": pki.client_cert,
        "kafka_ssl_keyfile": pki.client_key,
        "kafka_request_timeout_ms": 5_000,
        **SIGNING,
    }
    values.update(overrides)
    return CommonSettings(**values)


def redis_tls(server: TlsRedis, pki: Pki, **overrides: Any) -> CommonSettings:
    values: dict[str, Any] = {
        "redis_url": f"redis://localhost:{server.port}/0",
        "redis_tls": True,
        "redis_ssl_cafile": pki.ca,
        "redis_username": TlsRedis.USER,
        "redis_password": REDIS_PASSWORD,
        "redis_socket_timeout_s": 2.0,
        "redis_connect_timeout_s": 2.0,
    }
    values.update(overrides)
    return CommonSettings(**values)


# --- Kafka over (mutual) TLS, through the real broker -----------------------------------------


async def test_every_kafka_client_works_over_mutual_tls(tls_broker: TlsBroker, pki: Pki) -> None:
    """The admin client creates tongda's topics, a producer and a consumer group exchange a
    record: each through TLS, the broker's certificate checked against our CA and ours shown."""
    s = kafka_tls(tls_broker, pki)
    handshakes_before = tls_broker.terminator.handshakes
    await ensure_topics(s)
    assert await missing_topics(s, [t.name for t in topic_specs(s)]) == []

    producer = make_producer(s, "tls-test")
    consumer = make_consumer(s, "tls-test-group", [s.topics.feedback], "tls-test")
    await producer.start()
    try:
        await producer.send_and_wait(s.topics.feedback, b"over tls", key=b"c-1")
        await consumer.start()
        got: list[bytes | None] = []
        async with asyncio.timeout(30):
            while not got:
                batch = await consumer.getmany(timeout_ms=500)
                got += [r.value for records in batch.values() for r in records]
        assert got == [b"over tls"]
    finally:
        await consumer.stop()
        await producer.stop()
    assert tls_broker.terminator.handshakes > handshakes_before


async def test_router_faust_credentials_connect_over_tls(tls_broker: TlsBroker, pki: Pki) -> None:
    """The router's faust app carries the same SSL context; the client options faust derives
    from it reach the broker over mutual TLS."""
    s = RouterSettings(**kafka_tls(tls_broker, pki).model_dump())
    app, _ = create_app(s, load_plans(None), load_policy("none", None), Classifier.from_file(None))
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context is kafka_ssl_context(s)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SSL"
    producer = AIOKafkaProducer(
        bootstrap_servers=tls_broker.bootstrap, request_timeout_ms=5_000, **auth
    )
    await ensure_topics(kafka_tls(tls_broker, pki))
    await producer.start()
    try:
        meta = await producer.send_and_wait(s.topics.feedback, b"from faust's options")
        assert meta.offset >= 0
    finally:
        await producer.stop()


async def test_a_broker_certificate_from_another_ca_is_refused(
    tls_broker: TlsBroker, pki: Pki, other_pki: Pki
) -> None:
    producer = make_producer(kafka_tls(tls_broker, pki, kafka_ssl_cafile=other_pki.ca), "t")
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


async def test_no_client_certificate_is_refused_by_a_mutual_tls_broker(
    tls_broker: TlsBroker, pki: Pki
) -> None:
    s = kafka_tls(tls_broker, pki, kafka_ssl_certfile=None, kafka_ssl_keyfile=None)
    producer = make_producer(s, "t")
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


async def test_plaintext_client_cannot_talk_to_the_tls_listener(tls_broker: TlsBroker) -> None:
    producer = make_producer(
        CommonSettings(kafka_bootstrap=tls_broker.bootstrap, kafka_request_timeout_ms=3_000),
        "t",
    )
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


# --- Kafka SASL: what reaches aiokafka and faust --------------------------------------------


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_sasl_ssl_settings_reach_every_client(pki: Pki, mechanism: str) -> None:
    s = CommonSettings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="tongda",
        kafka_sasl_password=SASL_PASSWORD,
        kafka_ssl_cafile=pki.ca,
    )
    context = kafka_ssl_context(s)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    producer = make_producer(s, "t")
    consumer = make_consumer(s, "g", ["x"], "t")
    try:
        for client in (producer.client, consumer._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == mechanism
            assert client._sasl_plain_username == "tongda"
            assert client._sasl_plain_password == SASL_PASSWORD
            assert client._ssl_context is context  # one context per process
    finally:
        await producer.stop()
        await consumer.stop()
    credentials = faust_broker_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    expected = kafka_client_options(s)
    del expected["bootstrap_servers"]
    assert credentials_to_aiokafka_auth(credentials) == expected
    assert SASL_PASSWORD not in repr(credentials)
    assert SASL_PASSWORD not in repr(s)


def test_sasl_plaintext_has_no_ssl_context() -> None:
    s = CommonSettings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
    )
    options = kafka_client_options(s)
    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert "ssl_context" not in options
    credentials = faust_broker_credentials(s)
    assert credentials_to_aiokafka_auth(credentials)["security_protocol"] == "SASL_PLAINTEXT"


def test_plaintext_by_default() -> None:
    s = CommonSettings()
    assert kafka_client_options(s) == {
        "bootstrap_servers": s.kafka_bootstrap,
        "security_protocol": "PLAINTEXT",
    }
    assert faust_broker_credentials(s) is None


# --- misconfigurations are ConfigErrors naming the setting ----------------------------------


def misconfigurations(tmp: Path) -> list[tuple[dict[str, Any], str]]:
    garbage = tmp / "garbage.pem"
    garbage.write_text("not a certificate\n")
    missing = tmp / "nowhere" / "ca.pem"
    return [
        (
            {"kafka_security_protocol": "SASL_SSL", "kafka_sasl_username": "u"},
            "TONGDA_KAFKA_SASL_PASSWORD",
        ),
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_password": "p"},
            "TONGDA_KAFKA_SASL_USERNAME",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": missing},
            "TONGDA_KAFKA_SSL_CAFILE",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_cafile": garbage},
            "TONGDA_KAFKA_SSL_CAFILE",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_certfile": garbage},
            "TONGDA_KAFKA_SSL_CERTFILE",
        ),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": garbage},
            "TONGDA_KAFKA_SSL_KEYFILE set without TONGDA_KAFKA_SSL_CERTFILE",
        ),
        ({"kafka_ssl_cafile": garbage}, "TONGDA_KAFKA_SSL_CAFILE set but"),
        ({"redis_ssl_cafile": garbage}, "TONGDA_REDIS_SSL_CAFILE set but Redis TLS is off"),
        ({"redis_tls": True, "redis_ssl_cafile": missing}, "TONGDA_REDIS_SSL_CAFILE"),
        ({"redis_username": "tongda"}, "TONGDA_REDIS_USERNAME set without TONGDA_REDIS_PASSWORD"),
        (
            {"redis_url": "redis://:in-url@127.0.0.1:1/0", "redis_password": "in-setting"},
            "TONGDA_REDIS_PASSWORD set while TONGDA_REDIS_URL carries a password",
        ),
    ]


def test_misconfigurations_name_the_setting(tmp_path: Path) -> None:
    for values, message in misconfigurations(tmp_path):
        with pytest.raises(ConfigError) as caught:
            check_connection_settings(CommonSettings(**values))
        assert message in str(caught.value), values
        assert "in-setting" not in str(caught.value) and "in-url" not in str(caught.value)


def run_module(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO_ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_services_exit_2_on_a_security_misconfiguration(tmp_path: Path) -> None:
    """Before connecting anywhere: the topics job, a channel service and the router."""
    base = {**SIGNING_ENV, "TONGDA_KAFKA_BOOTSTRAP": "127.0.0.1:1", "TONGDA_LOG_FORMAT": "text"}
    sasl = {"TONGDA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "TONGDA_KAFKA_SASL_USERNAME": "u"}
    done = run_module("shared.topics", {**base, **sasl})
    assert done.returncode == 2, done.stderr
    assert "TONGDA_KAFKA_SASL_PASSWORD is not set" in done.stderr
    assert "Traceback" not in done.stderr

    no_ca = {"TONGDA_REDIS_TLS": "true", "TONGDA_REDIS_SSL_CAFILE": str(tmp_path / "none.pem")}
    done = run_module("services.sms", {**base, **no_ca, "TONGDA_HTTP_PORT": "0"})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "TONGDA_REDIS_SSL_CAFILE" in done.stdout + done.stderr

    done = run_module("services.router", {**base, **sasl, "TONGDA_API_TOKEN": "t"})
    assert done.returncode == 2, done.stderr
    assert "TONGDA_KAFKA_SASL_PASSWORD is not set" in done.stderr


def test_a_password_in_the_redis_url_is_not_in_the_settings_repr() -> None:
    s = CommonSettings(redis_url="redis://tongda:url-secret@redis:6379/0")
    assert "url-secret" not in repr(s) and "url-secret" not in str(s)


# --- Redis over TLS with an ACL user, through the real redis-server -------------------------


@pytest.fixture
async def redis_client_of() -> AsyncIterator[Any]:
    clients = []

    def make(settings: CommonSettings) -> Any:
        client = make_redis(settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


async def test_redis_over_tls_with_the_acl_user(
    tls_redis: TlsRedis, pki: Pki, redis_client_of: Any
) -> None:
    redis = redis_client_of(redis_tls(tls_redis, pki))
    assert await redis.set("tongda:tls-check", b"1")
    assert await redis.get("tongda:tls-check") == b"1"
    assert (await redis.acl_whoami()) in (TlsRedis.USER, TlsRedis.USER.encode())
    with pytest.raises(NoPermissionError):  # the ACL user's key pattern is enforced
        await redis.set("elsewhere", b"1")


async def test_rediss_url_with_a_client_certificate(
    tls_redis: TlsRedis, pki: Pki, redis_client_of: Any
) -> None:
    s = redis_tls(
        tls_redis,
        pki,
        redis_url=f"rediss://localhost:{tls_redis.port}/0",
        redis_tls=False,
        redis_ssl_certfile=pki.client_cert,
        redis_ssl_keyfile=pki.client_key,
    )
    redis = redis_client_of(s)
    assert await redis.ping()


async def test_redis_wrong_password_fails_clearly_without_the_password(
    tls_redis: TlsRedis, pki: Pki, redis_client_of: Any
) -> None:
    redis = redis_client_of(redis_tls(tls_redis, pki, redis_password="not-the-password"))
    with pytest.raises(AuthenticationError) as caught:
        await redis.ping()
    assert "not-the-password" not in str(caught.value)


async def test_redis_certificate_from_an_unknown_ca_is_refused(
    tls_redis: TlsRedis, pki: Pki, other_pki: Pki, redis_client_of: Any
) -> None:
    for cafile in (other_pki.ca, None):  # another CA; the system's CAs
        redis = redis_client_of(redis_tls(tls_redis, pki, redis_ssl_cafile=cafile))
        with pytest.raises(RedisConnectionError) as caught:
            await redis.ping()
        assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
        assert REDIS_PASSWORD not in str(caught.value)


async def test_redis_plaintext_client_cannot_use_the_tls_port(
    tls_redis: TlsRedis, pki: Pki, redis_client_of: Any
) -> None:
    redis = redis_client_of(redis_tls(tls_redis, pki, redis_tls=False, redis_ssl_cafile=None))
    with pytest.raises(RedisConnectionError):
        await redis.ping()


# --- the router as a process, on TLS Kafka and TLS Redis with the ACL user ------------------


async def test_router_process_routes_over_tls_with_the_redis_acl_user(
    tls_broker: TlsBroker, tls_redis: TlsRedis, pki: Pki, tmp_path: Path
) -> None:
    """`python -m services.router` configured only by TONGDA_* variables: its batch loop, its
    faust app (consumer group `tongda-router`) and its Redis state all over TLS, Redis as the
    ACL user limited to `tongda:*`; a request published over TLS comes out as a dispatch."""
    s = kafka_tls(tls_broker, pki)
    await ensure_topics(s)
    env = {
        "TONGDA_KAFKA_BOOTSTRAP": tls_broker.bootstrap,
        "TONGDA_KAFKA_SECURITY_PROTOCOL": "SSL",
        "TONGDA_KAFKA_SSL_CAFILE": str(pki.ca),
        "TONGDA_KAFKA_SSL_CERTFILE": str(pki.client_cert),
        "TONGDA_KAFKA_SSL_KEYFILE": str(pki.client_key),
        "TONGDA_REDIS_URL": f"rediss://localhost:{tls_redis.port}/0",
        "TONGDA_REDIS_SSL_CAFILE": str(pki.ca),
        "TONGDA_REDIS_USERNAME": TlsRedis.USER,
        "TONGDA_REDIS_PASSWORD": REDIS_PASSWORD,
    }
    async with router_process(tmp_path, env) as router:
        await a_request_comes_out_as_a_dispatch(s, "tls", router)

        # faust's own consumer (the inquiries agent) reads over TLS too: an invalid inquiry
        # comes back as a dead letter
        producer = make_producer(s, "tls-e2e")
        reader = make_consumer(s, "tls-e2e-dead", [s.topics.deadletter], "tls-e2e")
        await producer.start()
        await reader.start()
        try:
            await producer.send_and_wait(s.topics.inquiries, b"not json", key=b"c-tls")
            dead: list[Any] = []
            async with asyncio.timeout(60):
                while not dead:
                    batch = await reader.getmany(timeout_ms=500)
                    dead += [r for rs in batch.values() for r in rs]
            assert dict(dead[0].headers)["source-topic"] == s.topics.inquiries.encode()
        finally:
            await reader.stop()
            await producer.stop()

        check = make_redis(redis_tls(tls_redis, pki))
        try:
            # the router's state, written as the ACL user
            assert [k async for k in check.scan_iter(match="tongda:*")]
        finally:
            await check.aclose()
    text = router.log_path.read_text()
    assert REDIS_PASSWORD not in text
    assert "NOPERM" not in text and "no permissions" not in text, text[-3000:]
