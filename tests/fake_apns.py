"""A local stand-in for APNs, speaking HTTP/2 (cleartext, prior knowledge) with the `h2`
library, following Apple's documented shapes: `POST /3/device/{token}` with
`authorization: bearer <provider token>` (an ES256 JWT, `kid` = key id, `iss` = team id,
`iat` within the hour), `apns-topic`, `apns-push-type`; 200 with an `apns-id` header, or an
error status with `{"reason": ...}` (410 adds `timestamp`). The device token's prefix chooses
the error (see ERRORS).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded

ERRORS: dict[str, tuple[int, str]] = {
    "unregistered": (410, "Unregistered"),
    "bad": (400, "BadDeviceToken"),
    "othertopic": (400, "DeviceTokenNotForTopic"),
    "busy": (429, "TooManyRequests"),
    "down": (503, "ServiceUnavailable"),
}


def signing_key() -> tuple[str, Any]:
    """A fresh P-256 key as a .p8 PEM, and its public key."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, key.public_key()


@dataclass
class FakeApns:
    public_key: Any
    key_id: str
    team_id: str
    topic: str
    sends: list[dict[str, Any]] = field(default_factory=list)
    provider_tokens: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)

    def expire_provider_tokens(self) -> None:
        """Answer 403 ExpiredProviderToken to every provider token seen so far."""
        self.expired |= self.provider_tokens

    async def start(self, port: int) -> str:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port)
        return f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
                    elif isinstance(event, DataReceived):
                        streams[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    elif isinstance(event, StreamEnded):
                        headers, body = streams.pop(event.stream_id)
                        status, extra, answer = self.handle(headers, bytes(body))
                        conn.send_headers(
                            event.stream_id, [(":status", str(status)), *extra.items()]
                        )
                        conn.send_data(event.stream_id, answer, end_stream=True)
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One request → status, headers, body, as APNs answers."""

        def error(status: int, reason: str) -> tuple[int, dict[str, str], bytes]:
            answer: dict[str, Any] = {"reason": reason}
            if status == 410:
                answer["timestamp"] = int(time.time() * 1000)
            return status, {"content-type": "application/json"}, json.dumps(answer).encode()

        path = headers.get(":path", "")
        if headers.get(":method") != "POST" or not path.startswith("/3/device/"):
            return error(405 if headers.get(":method") != "POST" else 404, "BadPath")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return error(403, "MissingProviderToken")
        try:
            if jwt.get_unverified_header(token).get("kid") != self.key_id:
                return error(403, "InvalidProviderToken")
            claims = jwt.decode(
                token, self.public_key, algorithms=["ES256"], options={"require": ["iss", "iat"]}
            )
        except jwt.PyJWTError:
            return error(403, "InvalidProviderToken")
        if claims["iss"] != self.team_id:
            return error(403, "InvalidProviderToken")
        if token in self.expired or int(claims["iat"]) < time.time() - 3600:
            return error(403, "ExpiredProviderToken")
        self.provider_tokens.add(token)
        if headers.get("apns-topic") != self.topic:
            return error(400, "TopicDisallowed")
        if headers.get("apns-push-type") not in ("alert", "background"):
            return error(400, "InvalidPushType")
        try:
            payload = json.loads(body)
        except ValueError:
            return error(400, "PayloadEmpty")
        if not isinstance(payload, dict) or "aps" not in payload:
            return error(400, "PayloadEmpty")
        device = path.removeprefix("/3/device/")
        self.sends.append({"device": device, "headers": headers, "payload": payload})
        for prefix, (status, reason) in ERRORS.items():
            if device.startswith(prefix):
                return error(status, reason)
        return 200, {"apns-id": str(uuid.uuid4()).upper()}, b""
