"""Certificates, a TLS-terminated Tansu broker and a TLS redis-server with an ACL user, for the
transport-security tests (tests/test_transport_security.py); the relay and the fronted Tansu
that the SASL peer (tests/sasl_support.py, tests/test_kafka_sasl.py) builds on.

Why a TLS terminator in front of Tansu: the Tansu 0.6.0 binary accepts `--cert`/`--key` but
serves every connection in plaintext (its TLS acceptor is built and never used). Kafka's
metadata lets a relay stand in honestly for a listener: Tansu advertises the relay's port, so
every connection a client makes (bootstrap, then each broker it learns from metadata) goes
through it — here TLS from the client to the terminator, verified against our CA, and
plaintext only on loopback behind it.

SASL: Tansu's own `--authentication` cannot be used (its SCRAM users cannot be created on its
in-memory storage: creating one needs an authenticated session), so SASL is tested through a
SASL peer on the same relay (tests/sasl_support.py): the broker's side of the handshake with
`scramp`'s SCRAM server, then piped to Tansu. What that still does not test is a real broker's
SASL listener (its SCRAM user store, ACLs on the principal, re-authentication): see
docs/operations.md, "TLS, SASL and Redis ACL users".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tools.devstack import Broker, RedisServer, free_port
from tools.devstack.net import port_open

HOST = "127.0.0.1"


@dataclass(frozen=True)
class Pki:
    """A CA and, signed by it, a server certificate (for localhost and 127.0.0.1) and a
    client certificate; PEM files in one directory."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    usage: list[x509.ObjectIdentifier],
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path, name: str = "tongda test CA") -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert(name, ca_key, None, ca_key, ca=True, usage=[])
    paths = Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, subject, usage in (
        (paths.server_cert, paths.server_key, "localhost", ExtendedKeyUsageOID.SERVER_AUTH),
        (paths.client_cert, paths.client_key, "tongda", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = _key()
        cert = _cert(subject, key, ca.subject, ca_key, ca=False, usage=[usage])
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
    return paths


def server_context(pki: Pki, *, require_client_cert: bool) -> ssl.SSLContext:
    """A server context presenting our server certificate; client certificates checked against
    our CA, and required when `require_client_cert`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return context


class Relay:
    """Accepts connections on `port` (TLS when given a context) and pipes each one to
    `upstream_port` on loopback in plaintext; its own event loop in a thread. A subclass may
    speak to the client first (`_serve`) before piping."""

    def __init__(self, upstream_port: int, context: ssl.SSLContext | None) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.context = context
        self.connections = 0  # accepted (for TLS: once the handshake completed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Future[Any]] = set()
        self._idle = threading.Event()  # set while no connection is being served
        self._idle.set()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._idle.clear()
        self._open.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
            except OSError:
                return
            self._open.add(up_writer)
            try:
                await self._serve(reader, writer, up_reader, up_writer)
            finally:
                self._open.discard(up_writer)
                with contextlib.suppress(Exception):
                    up_writer.close()
        finally:
            self._open.discard(writer)
            self._handlers.discard(task)
            if not self._handlers:
                self._idle.set()
            with contextlib.suppress(Exception):
                writer.close()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no connection is being served (each one accepted has ended)."""
        return self._idle.wait(timeout)

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, HOST, self.port, ssl=self.context), self._loop
        ).result(10)

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                if hasattr(server, "close_clients"):
                    server.close_clients()
                # the connections still open (Python 3.11 has no close_clients): aborted,
                # so that their handlers end before the loop stops
                for writer in list(self._open):
                    writer.transport.abort()
                if self._handlers:
                    await asyncio.wait(self._handlers, timeout=5)

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class TlsTerminator(Relay):
    """Accepts TLS on `port` (client certificates required when `require_client_cert`) and
    pipes each connection to `upstream_port` in plaintext."""

    def __init__(self, pki: Pki, upstream_port: int, *, require_client_cert: bool) -> None:
        super().__init__(
            upstream_port, server_context(pki, require_client_cert=require_client_cert)
        )

    @property
    def handshakes(self) -> int:
        """TLS connections that completed a handshake."""
        return self.connections


class FrontedTansu:
    """Tansu (plaintext, loopback, in memory) advertising the port of the relay in front of
    it, so that every connection a client makes goes through that relay."""

    def __init__(self, front: Callable[[int], Relay], log_path: Path) -> None:
        self.tansu_port = free_port()
        self.front = front(self.tansu_port)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.front.port}"

    def start(self) -> None:
        inner = f"tcp://{HOST}:{self.tansu_port}"
        advertised = f"tcp://localhost:{self.front.port}"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    Broker.find_binary(),
                    "broker",
                    "--listener-url",
                    inner,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 10
        while not port_open(HOST, self.tansu_port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        self.front.start()

    def stop(self) -> None:
        self.front.stop()
        terminate(self.proc)


class TlsBroker(FrontedTansu):
    """Tansu advertising the TLS port of a terminator in front of it."""

    def __init__(self, pki: Pki, log_path: Path, *, require_client_cert: bool = True) -> None:
        super().__init__(
            lambda port: TlsTerminator(pki, port, require_client_cert=require_client_cert),
            log_path,
        )
        assert isinstance(self.front, TlsTerminator)
        self.terminator: TlsTerminator = self.front


class TlsRedis:
    """redis-server with TLS only (no plaintext port), client certificates optional, and the
    ACL user `tongda` (keys `tongda:*`, every command but the @admin and @dangerous ones: what
    docs/operations.md recommends); the `default` user is off."""

    USER = "tongda"

    def __init__(self, pki: Pki, log_path: Path, password: str) -> None:
        self.port = free_port()
        self.pki = pki
        self.log_path = log_path
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    RedisServer.find_binary(),
                    "--port",
                    "0",
                    "--bind",
                    HOST,
                    "--tls-port",
                    str(self.port),
                    "--tls-cert-file",
                    str(self.pki.server_cert),
                    "--tls-key-file",
                    str(self.pki.server_key),
                    "--tls-ca-cert-file",
                    str(self.pki.ca),
                    "--tls-auth-clients",
                    "optional",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--user",
                    "default",
                    "off",
                    "--user",
                    self.USER,
                    "on",
                    f">{self.password}",
                    "~tongda:*",
                    "&*",
                    "+@all",
                    "-@admin",
                    "-@dangerous",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while not port_open(HOST, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {self.log_path.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        terminate(self.proc)


def terminate(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop a server started by these helpers: SIGTERM, then SIGKILL after 10 s."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
