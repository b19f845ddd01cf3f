"""Kafka SASL on the wire: tongda's clients, built from settings, authenticate to a SASL
listener (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN over TLS) and then work on the real Tansu broker
behind it.

The listener is the test peer of tests/sasl_support.py (Tansu's own SCRAM users cannot be
created on its in-memory storage): it speaks the broker's side of the SASL handshake, the SCRAM
server side being `scramp` over stored credentials, and Tansu advertises its port, so every
connection a client opens authenticates there. The peer counts authentications per mechanism:
the tests assert the exchange happened on every connection, not only that settings were passed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.conn import AIOKafkaConnection, create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from services.router.app import create_app
from services.router.intents import Classifier
from services.router.plans import load_plans
from services.router.policy import load_policy
from shared.config import CommonSettings, RouterSettings
from shared.kafka import make_consumer, make_producer
from shared.security import kafka_client_options
from shared.topics import ensure_topics, missing_topics, topic_specs
from tests.router_process import a_request_comes_out_as_a_dispatch, router_process
from tests.sasl_support import SaslBroker, SaslPeer
from tests.signing_keys import SIGNING
from tests.tls_support import Pki, make_pki

USER = "tongda"
PASSWORD = "sasl-secret-5be1"
USERS = {USER: PASSWORD, "other": "other-secret-77a0"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("sasl-pki"))


@pytest.fixture(scope="module")
def scram_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    """SASL_PLAINTEXT with the SCRAM mechanisms only (PLAIN is not enabled in the clear)."""
    broker = SaslBroker(
        USERS,
        tmp_path_factory.mktemp("sasl-broker") / "tansu.log",
        mechanisms=["SCRAM-SHA-256", "SCRAM-SHA-512"],
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def sasl_ssl_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    """SASL_SSL: TLS (our CA) first, then PLAIN or SCRAM."""
    broker = SaslBroker(USERS, tmp_path_factory.mktemp("sasl-ssl-broker") / "tansu.log", pki=pki)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def sasl(
    broker: SaslBroker, mechanism: str, pki: Pki | None = None, **overrides: Any
) -> CommonSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_security_protocol": "SASL_PLAINTEXT" if pki is None else "SASL_SSL",
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": USER,
        "kafka_sasl_password": PASSWORD,
        "kafka_ssl_cafile": None if pki is None else pki.ca,
        "kafka_request_timeout_ms": 5_000,
        **SIGNING,
    }
    values.update(overrides)
    return CommonSettings(**values)


class Tally:
    """What the peer counted during a block: connections and authentications."""

    def __init__(self, peer: SaslPeer) -> None:
        self.peer = peer
        self.connections = peer.connections
        self.authenticated = dict(peer.authenticated)
        self.failed = dict(peer.failed)
        self.abandoned = peer.abandoned
        self.closed_unauthenticated = peer.closed_unauthenticated

    async def settled(self) -> None:
        """Once every connection the peer accepted has ended (the clients were stopped): each
        one authenticated or was abandoned by its client mid-handshake, none refused."""
        assert await asyncio.to_thread(self.peer.wait_idle, 10)
        authenticated = sum(self.new_authenticated(m) for m in self.peer.mechanisms)
        abandoned = self.peer.abandoned - self.abandoned
        assert authenticated + abandoned == self.new_connections()
        assert sum(self.new_failed(m) for m in self.peer.mechanisms) == 0
        assert self.peer.closed_unauthenticated == self.closed_unauthenticated

    def new_connections(self) -> int:
        return self.peer.connections - self.connections

    def new_authenticated(self, mechanism: str) -> int:
        return self.peer.authenticated[mechanism] - self.authenticated.get(mechanism, 0)

    def new_failed(self, mechanism: str) -> int:
        return self.peer.failed[mechanism] - self.failed.get(mechanism, 0)


async def produce_and_consume(s: CommonSettings, group: str, value: bytes) -> None:
    producer = make_producer(s, group)
    consumer = make_consumer(s, group, [s.topics.feedback], group)
    await producer.start()
    try:
        await producer.send_and_wait(s.topics.feedback, value, key=b"c-1")
        await consumer.start()
        got: list[bytes | None] = []
        async with asyncio.timeout(30):
            while value not in got:
                batch = await consumer.getmany(timeout_ms=500)
                got += [r.value for records in batch.values() for r in records]
    finally:
        await consumer.stop()
        await producer.stop()


# --- tongda's clients authenticate, then work on the broker behind ---------------------------


async def test_every_kafka_client_authenticates_with_each_mechanism(
    scram_broker: SaslBroker, sasl_ssl_broker: SaslBroker, pki: Pki
) -> None:
    """For SCRAM-SHA-256 and SCRAM-SHA-512 (SASL_PLAINTEXT), PLAIN and SCRAM-SHA-512 (SASL_SSL):
    the admin client creates tongda's topics, a producer and a consumer group exchange a
    record; every connection they open authenticates with the configured mechanism. The four
    run at once (a group join takes ~3 s on Tansu)."""
    cases = [
        (scram_broker, sasl(scram_broker, "SCRAM-SHA-256")),
        (scram_broker, sasl(scram_broker, "SCRAM-SHA-512")),
        (sasl_ssl_broker, sasl(sasl_ssl_broker, "PLAIN", pki)),
        (sasl_ssl_broker, sasl(sasl_ssl_broker, "SCRAM-SHA-512", pki)),
    ]
    tallies = {id(b): Tally(b.peer) for b in (scram_broker, sasl_ssl_broker)}
    for _, s in cases:
        await ensure_topics(s)
        assert await missing_topics(s, [t.name for t in topic_specs(s)]) == []
    await asyncio.gather(
        *(
            produce_and_consume(
                s,
                f"sasl-{s.kafka_security_protocol}-{s.kafka_sasl_mechanism}".lower(),
                f"via {s.kafka_security_protocol} {s.kafka_sasl_mechanism}".encode(),
            )
            for _, s in cases
        )
    )
    for broker, s in cases:
        # admin, producer, consumer and its coordinator: several connections each
        assert tallies[id(broker)].new_authenticated(s.kafka_sasl_mechanism) >= 3, s
    for tally in tallies.values():
        await tally.settled()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_router_faust_credentials_authenticate(
    scram_broker: SaslBroker, mechanism: str
) -> None:
    """The router's faust app carries SASLCredentials; the aiokafka options faust derives from
    them authenticate and produce."""
    s = RouterSettings(**sasl(scram_broker, mechanism).model_dump())
    app, _ = create_app(s, load_plans(None), load_policy("none", None), Classifier.from_file(None))
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["sasl_mechanism"] == mechanism
    await ensure_topics(s)
    tally = Tally(scram_broker.peer)
    producer = AIOKafkaProducer(
        bootstrap_servers=scram_broker.bootstrap, request_timeout_ms=5_000, **auth
    )
    await producer.start()
    try:
        meta = await producer.send_and_wait(s.topics.feedback, b"from faust's options")
        assert meta.offset >= 0
    finally:
        await producer.stop()
    assert tally.new_authenticated(mechanism) >= 1
    await tally.settled()


# --- refusals ---------------------------------------------------------------------------------


def aiokafka_errors(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("aiokafka"))


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_a_wrong_password_is_refused_clearly(
    scram_broker: SaslBroker, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-the-password-3c9e"
    s = sasl(scram_broker, mechanism, kafka_sasl_password=wrong)
    tally = Tally(scram_broker.peer)

    # one connection, as every tongda client makes it: the broker's answer is the error
    with pytest.raises(SaslAuthenticationFailed) as caught:
        await connect(scram_broker, s)
    message = str(caught.value)
    assert f"invalid credentials with SASL mechanism {mechanism}" in message
    assert wrong not in message and PASSWORD not in message

    # a tongda producer cannot start, and aiokafka's log says why
    caplog.set_level(logging.ERROR, logger="aiokafka")
    producer = make_producer(s, "t")
    try:
        with pytest.raises(KafkaConnectionError) as bootstrap:
            await producer.start()
    finally:
        await producer.stop()
    logged = aiokafka_errors(caplog)
    assert "SaslAuthenticationFailed" in logged and mechanism in logged, logged
    for text in (logged, str(bootstrap.value), caplog.text):
        assert wrong not in text and PASSWORD not in text
    assert tally.new_failed(mechanism) == 2
    assert tally.new_authenticated(mechanism) == 0


async def test_an_unknown_user_is_refused(scram_broker: SaslBroker) -> None:
    s = sasl(scram_broker, "SCRAM-SHA-256", kafka_sasl_username="nobody")
    tally = Tally(scram_broker.peer)
    with pytest.raises(SaslAuthenticationFailed):
        await connect(scram_broker, s)
    assert tally.new_failed("SCRAM-SHA-256") == 1


async def test_another_users_password_is_refused(scram_broker: SaslBroker) -> None:
    """`other` exists, but its password is not `tongda`'s."""
    s = sasl(scram_broker, "SCRAM-SHA-512", kafka_sasl_password=USERS["other"])
    with pytest.raises(SaslAuthenticationFailed):
        await connect(scram_broker, s)


async def test_a_mechanism_the_broker_has_not_enabled_is_refused(
    scram_broker: SaslBroker,
) -> None:
    s = sasl(scram_broker, "PLAIN")
    before = scram_broker.peer.unsupported["PLAIN"]
    with pytest.raises(UnsupportedSaslMechanismError):
        await connect(scram_broker, s)
    assert scram_broker.peer.unsupported["PLAIN"] == before + 1


async def test_a_wrong_plain_password_is_refused_over_sasl_ssl(
    sasl_ssl_broker: SaslBroker, pki: Pki
) -> None:
    wrong = "plain-wrong-0d41"
    s = sasl(sasl_ssl_broker, "PLAIN", pki, kafka_sasl_password=wrong)
    tally = Tally(sasl_ssl_broker.peer)
    with pytest.raises(SaslAuthenticationFailed) as caught:
        await connect(sasl_ssl_broker, s)
    assert "invalid credentials with SASL mechanism PLAIN" in str(caught.value)
    assert wrong not in str(caught.value)
    assert tally.new_failed("PLAIN") == 1


async def test_a_client_without_sasl_gets_nothing_from_the_broker(
    scram_broker: SaslBroker,
) -> None:
    """A PLAINTEXT client's first request after ApiVersions (Metadata) closes the connection:
    nothing reaches Tansu unauthenticated."""
    before = scram_broker.peer.closed_unauthenticated
    producer = make_producer(
        CommonSettings(kafka_bootstrap=scram_broker.bootstrap, kafka_request_timeout_ms=3_000),
        "t",
    )
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()
    assert scram_broker.peer.closed_unauthenticated > before


async def test_the_pre_kip_152_token_framing_authenticates_too(
    scram_broker: SaslBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that sees SaslHandshake v0 only sends the SASL tokens raw (aiokafka's own path
    for old brokers): the peer's v0 handshake works, and a wrong password gets the connection
    closed, as a broker does, with nothing in answer."""
    lookup = AIOKafkaConnection._do_version_lookup

    async def v0_handshake_only(self: AIOKafkaConnection) -> None:
        await lookup(self)
        self._versions[17] = (0, 0)

    monkeypatch.setattr(AIOKafkaConnection, "_do_version_lookup", v0_handshake_only)
    tally = Tally(scram_broker.peer)
    await connect(scram_broker, sasl(scram_broker, "SCRAM-SHA-256"))
    assert tally.new_authenticated("SCRAM-SHA-256") == 1
    s = sasl(scram_broker, "SCRAM-SHA-256", kafka_sasl_password="wrong-v0")
    with pytest.raises(KafkaConnectionError):
        await connect(scram_broker, s)
    assert tally.new_failed("SCRAM-SHA-256") == 1


async def connect(broker: SaslBroker, s: CommonSettings) -> None:
    """One connection made as every tongda client makes it (kafka_client_options): ApiVersions,
    the SASL handshake and exchange; closed again when it succeeds."""
    options = kafka_client_options(s)
    del options["bootstrap_servers"]
    host, port = broker.bootstrap.split(":")
    conn = await create_conn(host, int(port), request_timeout_ms=5_000, **options)
    conn.close()


# --- the router as a process, configured by the environment, over SASL_SSL -------------------


async def test_router_process_routes_over_sasl_ssl(
    sasl_ssl_broker: SaslBroker, pki: Pki, redis_server: str, tmp_path: Path
) -> None:
    """`python -m services.router` with only TONGDA_* variables: TLS to our CA, then
    SCRAM-SHA-512 on each of its connections (batch loop, outbox, faust); a request published
    over SASL_SSL comes out as a dispatch, and the password is in none of its logs."""
    s = sasl(sasl_ssl_broker, "SCRAM-SHA-512", pki)
    await ensure_topics(s)
    tally = Tally(sasl_ssl_broker.peer)
    env = {
        "TONGDA_KAFKA_BOOTSTRAP": sasl_ssl_broker.bootstrap,
        "TONGDA_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "TONGDA_KAFKA_SSL_CAFILE": str(pki.ca),
        "TONGDA_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "TONGDA_KAFKA_SASL_USERNAME": USER,
        "TONGDA_KAFKA_SASL_PASSWORD": PASSWORD,
        "TONGDA_REDIS_URL": redis_server,
    }
    async with router_process(tmp_path, env) as router:
        assert tally.new_authenticated("SCRAM-SHA-512") >= 2  # the router's own clients
        await a_request_comes_out_as_a_dispatch(s, "sasl", router)
    await tally.settled()
    text = router.log_path.read_text()
    assert PASSWORD not in text
