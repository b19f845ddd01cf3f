"""A SASL peer in front of Tansu: the Kafka SASL listener a broker has, for the SASL tests
(tests/test_kafka_sasl.py).

Why: Tansu 0.6.0 can authenticate (`--authentication`), but its SCRAM users cannot be created on
its in-memory storage (creating one needs an authenticated session), so no client can pass. The
peer plays the broker's side of KIP-43/KIP-152 on each connection, then pipes the connection to
Tansu, whose metadata advertises the peer's port (tests/tls_support.py `FrontedTansu`), so every
connection a client makes (bootstrap, then each broker it learns) authenticates here:

- ApiVersions (api key 18) before the handshake is forwarded to Tansu and its answer returned
  (Tansu lists SaslHandshake 0-1 and SaslAuthenticate 0-2, as a broker with SASL does);
- SaslHandshake (17, v0/v1) is answered with the enabled mechanisms, or with
  UNSUPPORTED_SASL_MECHANISM (33) and the connection closed;
- after a v1 handshake, SaslAuthenticate (36, v0/v1: what aiokafka and librdkafka send)
  requests carry the SASL tokens; after a v0 handshake the tokens come raw (a length and the
  bytes), as before KIP-152;
- SCRAM-SHA-256/512: the server side is `scramp`'s ScramServer over stored credentials (salt,
  StoredKey, ServerKey, iterations: what a broker keeps, never the password); PLAIN (RFC 4616)
  is compared by hand;
- a failed authentication is answered with SASL_AUTHENTICATION_FAILED (58) and a message
  naming the mechanism (never the password), then the connection is closed (after a v0
  handshake: closed without an answer, as a broker does);
- any other request before authentication closes the connection;
- once authenticated, bytes are piped both ways, untouched.

What it does not stand for: a real broker's SASL listener (its JAAS/SCRAM configuration, the
users created with kafka-configs.sh, ACLs on the authenticated principal, re-authentication
under KIP-368: the peer answers a session lifetime of 0, none), SaslAuthenticate v2 (the
flexible version Tansu advertises: the peer closes the connection on it, as on any request it
does not answer), GSSAPI or OAUTHBEARER.
"""

from __future__ import annotations

import asyncio
import hmac
import ssl
import struct
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from scramp import ScramMechanism

from tests.tls_support import FrontedTansu, Pki, Relay, server_context

API_VERSIONS = 18
SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36
NONE = 0
UNSUPPORTED_SASL_MECHANISM = 33
SASL_AUTHENTICATION_FAILED = 58
MAX_FRAME = 512 * 1024  # a broker's sasl.server.max.receive.size before authentication
SCRAM_ITERATIONS = 4096  # Kafka's minimum and default

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class AuthenticationFailed(Exception):
    pass


class Closed(Exception):
    """The client sent something a broker closes the connection on."""


# --- the wire: only the few fields the handshake needs --------------------------------------


def _string(value: str | None) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def _frame(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    if not 0 <= size <= MAX_FRAME:
        raise Closed(f"frame of {size} bytes before authentication")
    return await reader.readexactly(size)


class Request:
    """A request's header (v1: the SASL requests the peer answers are not flexible) and where
    its body starts."""

    def __init__(self, frame: bytes) -> None:
        if len(frame) < 10:
            raise Closed("short request")
        self.frame = frame
        self.api_key, self.api_version, self.correlation_id = struct.unpack_from(">hhi", frame)
        (client_id_len,) = struct.unpack_from(">h", frame, 8)
        self.body = 10 + max(client_id_len, 0)


# --- the mechanisms ---------------------------------------------------------------------------


class Exchange:
    """One authentication: `step` takes a client token, returns the server's token and
    whether the exchange is over (authenticated); raises AuthenticationFailed."""

    def step(self, token: bytes) -> tuple[bytes, bool]:
        raise NotImplementedError


class PlainExchange(Exchange):
    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords

    def step(self, token: bytes) -> tuple[bytes, bool]:
        parts = token.split(b"\0")
        if len(parts) != 3:
            raise AuthenticationFailed("malformed PLAIN token")
        authzid, user, password = parts
        expected = self.passwords.get(user.decode(errors="replace"))
        if (
            expected is None
            or authzid not in (b"", user)
            or not hmac.compare_digest(password, expected.encode())
        ):
            raise AuthenticationFailed("invalid username or password")
        return b"", True


Credentials = tuple[bytes, bytes, bytes, int]  # salt, StoredKey, ServerKey, iterations


class ScramExchange(Exchange):
    def __init__(self, mechanism: ScramMechanism, credentials: dict[str, Credentials]) -> None:
        self.server = mechanism.make_server(self._credentials_of)
        self.credentials = credentials
        self.first = True

    def _credentials_of(self, username: str) -> Credentials:
        return self.credentials[username]  # KeyError: unknown user

    def step(self, token: bytes) -> tuple[bytes, bool]:
        try:
            if self.first:
                self.first = False
                self.server.set_client_first(token.decode())
                return self.server.get_server_first().encode(), False
            self.server.set_client_final(token.decode())  # checks the client's proof
            return self.server.get_server_final().encode(), True
        except Exception as exc:  # scramp's ScramException, an unknown user, bad UTF-8
            raise AuthenticationFailed(type(exc).__name__) from None


# --- the peer ---------------------------------------------------------------------------------


class SaslPeer(Relay):
    """The SASL listener (TLS first when given a context) in front of `upstream_port`.

    `users` maps user names to passwords; the SCRAM credentials are derived from them once,
    here, with a fresh salt per user and mechanism. Counters (read from the test's thread):
    `authenticated` and `failed` per mechanism, `unsupported` handshakes per requested
    mechanism, `closed_unauthenticated` requests other than ApiVersions/SASL (or malformed)
    before authentication, `abandoned` connections the client closed mid-handshake."""

    def __init__(
        self,
        upstream_port: int,
        users: dict[str, str],
        *,
        mechanisms: Iterable[str] = MECHANISMS,
        context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(upstream_port, context)
        self.mechanisms = list(mechanisms)
        self._passwords = dict(users)
        self._scram = {
            name: (
                ScramMechanism(name),
                {
                    user: ScramMechanism(name).make_auth_info(
                        password, iteration_count=SCRAM_ITERATIONS
                    )
                    for user, password in users.items()
                },
            )
            for name in self.mechanisms
            if name.startswith("SCRAM-")
        }
        self.authenticated: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.unsupported: Counter[str] = Counter()
        self.closed_unauthenticated = 0
        self.abandoned = 0

    def _exchange(self, mechanism: str) -> Exchange:
        if mechanism == "PLAIN":
            return PlainExchange(self._passwords)
        scram, credentials = self._scram[mechanism]
        return ScramExchange(scram, credentials)

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        try:
            authenticated = await self._authenticate(reader, writer, up_reader, up_writer)
        except (Closed, struct.error):  # struct.error: a malformed request
            self.closed_unauthenticated += 1
            authenticated = False
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError):
            self.abandoned += 1  # the client went away before the end of the handshake
            authenticated = False
        if authenticated:
            await super()._serve(reader, writer, up_reader, up_writer)

    async def _authenticate(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> bool:
        handshake_version: int | None = None
        exchange: Exchange | None = None
        mechanism = ""
        while True:
            frame = await _read_frame(reader)
            request = Request(frame)
            key, version = request.api_key, request.api_version
            if key == API_VERSIONS and handshake_version is None:
                up_writer.write(_frame(frame))
                await up_writer.drain()
                writer.write(_frame(await _read_frame(up_reader)))
                await writer.drain()
                continue
            if key == SASL_HANDSHAKE and handshake_version is None and version in (0, 1):
                (size,) = struct.unpack_from(">h", frame, request.body)
                start = request.body + 2
                mechanism = frame[start : start + size].decode(errors="replace")
                enabled = struct.pack(">i", len(self.mechanisms)) + b"".join(
                    _string(m) for m in self.mechanisms
                )
                supported = mechanism in self.mechanisms
                error = NONE if supported else UNSUPPORTED_SASL_MECHANISM
                if not supported:
                    self.unsupported[mechanism] += 1
                writer.write(_frame(struct.pack(">ih", request.correlation_id, error) + enabled))
                await writer.drain()
                if not supported:
                    return False
                handshake_version = version
                exchange = self._exchange(mechanism)
                if version == 0:
                    return await self._raw_tokens(reader, writer, exchange, mechanism)
                continue
            if key == SASL_AUTHENTICATE and exchange is not None and version in (0, 1):
                (size,) = struct.unpack_from(">i", frame, request.body)
                token = frame[request.body + 4 : request.body + 4 + size]
                try:
                    answer, done = exchange.step(token)
                except AuthenticationFailed:
                    self.failed[mechanism] += 1  # counted before the client can see it
                    message = (
                        "Authentication failed during authentication due to invalid "
                        f"credentials with SASL mechanism {mechanism}"
                    )
                    writer.write(
                        _authenticate_response(request, SASL_AUTHENTICATION_FAILED, message, b"")
                    )
                    await writer.drain()
                    return False
                if done:
                    self.authenticated[mechanism] += 1  # counted before the client can see it
                writer.write(_authenticate_response(request, NONE, None, answer))
                await writer.drain()
                if done:
                    return True
                continue
            self.closed_unauthenticated += 1
            return False  # a broker closes on anything else before authentication

    async def _raw_tokens(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        exchange: Exchange,
        mechanism: str,
    ) -> bool:
        """After a v0 handshake: tokens as length-prefixed bytes, no Kafka header; a failure
        closes the connection without an answer."""
        while True:
            token = await _read_frame(reader)
            try:
                answer, done = exchange.step(token)
            except AuthenticationFailed:
                self.failed[mechanism] += 1
                return False
            if done:
                self.authenticated[mechanism] += 1
            writer.write(_frame(answer))
            await writer.drain()
            if done:
                return True


def _authenticate_response(
    request: Request, error: int, message: str | None, token: bytes
) -> bytes:
    body = (
        struct.pack(">ih", request.correlation_id, error)
        + _string(message)
        + struct.pack(">i", len(token))
    )
    body += token
    if request.api_version == 1:
        body += struct.pack(">q", 0)  # session lifetime: no re-authentication
    return _frame(body)


class SaslBroker(FrontedTansu):
    """Tansu advertising the port of a SASL peer in front of it; SASL_SSL when given a PKI
    (the peer's TLS is one-way: the server certificate, no client certificate asked)."""

    def __init__(
        self,
        users: dict[str, str],
        log_path: Path,
        *,
        pki: Pki | None = None,
        mechanisms: Iterable[str] = MECHANISMS,
    ) -> None:
        context = None if pki is None else server_context(pki, require_client_cert=False)
        mechanisms = list(mechanisms)
        super().__init__(
            lambda port: SaslPeer(port, users, mechanisms=mechanisms, context=context), log_path
        )
        assert isinstance(self.front, SaslPeer)
        self.peer: SaslPeer = self.front
