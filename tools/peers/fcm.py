"""A local stand-in for Google's OAuth2 token endpoint and FCM HTTP v1, following their
documented shapes.

`POST /token` takes `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`,
verifies the RS256 signature with the service account's public key and the claims (iss, aud
= this URL, scope, iat/exp at most an hour apart, not expired) and answers
`{"access_token", "expires_in", "token_type": "Bearer"}`, or `{"error": "invalid_grant", ...}`.

`POST /v1/projects/{project}/messages:send` needs `Authorization: Bearer <live token>` (else
401 UNAUTHENTICATED) and `{"message": {...}}` with one target; it answers `{"name":
"projects/{project}/messages/{id}"}`, or the documented error body chosen by the device
token's prefix (see ERRORS).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

# token prefix → (HTTP status, google.rpc status, FcmError errorCode, message, Retry-After)
ERRORS: dict[str, tuple[int, str, str, str, str | None]] = {
    "unregistered": (404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.", None),
    "invalid": (
        400,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
        None,
    ),
    "mismatch": (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch", None),
    "quota": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded.", "9"),
    "unavailable": (503, "UNAVAILABLE", "UNAVAILABLE", "The service is unavailable.", "4"),
    "internal": (500, "INTERNAL", "INTERNAL", "Internal error encountered.", None),
}


def service_account(project_id: str, token_uri: str) -> tuple[dict[str, str], Any]:
    """A fresh service account key file (as JSON fields) and its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": f"tongda-push@{project_id}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return info, key.public_key()


def _fcm_error(status: int, rpc_status: str, code: str | None, message: str) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if code:
        error["details"] = [{"@type": FCM_ERROR, "errorCode": code}]
    return {"error": error}


@dataclass
class FakeFcm:
    project_id: str
    client_email: str
    public_key: Any
    token_url: str = ""  # set by start()
    token_lifetime_s: int = 3599
    exchanges: int = 0
    refused_grants: list[str] = field(default_factory=list)
    sends: list[dict[str, Any]] = field(default_factory=list)
    tokens: dict[str, float] = field(default_factory=dict)  # access token → expiry (epoch)

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post("/token", self.token)
        self.app.router.add_post("/v1/projects/{project}/messages:send", self.send)

    def revoke_all(self) -> None:
        """Make every access token issued so far invalid (as if it expired early)."""
        self.tokens.clear()

    def _grant_error(self, description: str) -> web.Response:
        self.refused_grants.append(description)
        return web.json_response(
            {"error": "invalid_grant", "error_description": description}, status=400
        )

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != GRANT_TYPE:
            return web.json_response(
                {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"},
                status=400,
            )
        assertion = str(form.get("assertion") or "")
        try:
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                audience=self.token_url,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.InvalidSignatureError:
            return self._grant_error("Invalid JWT Signature.")
        except jwt.PyJWTError as exc:
            return self._grant_error(f"Invalid JWT: {type(exc).__name__}")
        if claims["iss"] != self.client_email:
            return self._grant_error("Invalid issuer")
        if SCOPE not in str(claims["scope"]).split():
            return self._grant_error("Invalid scope")
        if int(claims["exp"]) - int(claims["iat"]) > 3600:
            return self._grant_error("Invalid JWT: Token must be a short-lived token")
        self.exchanges += 1
        access = "ya29." + uuid.uuid4().hex
        self.tokens[access] = time.time() + self.token_lifetime_s
        return web.json_response(
            {"access_token": access, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    async def send(self, request: web.Request) -> web.Response:
        scheme, _, access = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or self.tokens.get(access, 0) < time.time():
            return web.json_response(
                _fcm_error(
                    401,
                    "UNAUTHENTICATED",
                    None,
                    "Request had invalid authentication credentials. "
                    "Expected OAuth 2 access token, login cookie or other valid "
                    "authentication credential.",
                ),
                status=401,
            )
        if request.match_info["project"] != self.project_id:
            return web.json_response(
                _fcm_error(403, "PERMISSION_DENIED", None, "Permission denied."), status=403
            )
        try:
            body = json.loads(await request.read())
            message = body["message"]
        except (ValueError, KeyError, TypeError):
            return web.json_response(
                _fcm_error(400, "INVALID_ARGUMENT", None, "Invalid JSON payload received."),
                status=400,
            )
        targets = [k for k in ("token", "topic", "condition") if k in message]
        data = message.get("data", {})
        if len(targets) != 1 or not all(isinstance(v, str) for v in data.values()):
            return web.json_response(
                _fcm_error(400, "INVALID_ARGUMENT", None, "Invalid message"), status=400
            )
        self.sends.append(message)
        token = str(message.get("token", ""))
        for prefix, (status, rpc, code, text, retry_after) in ERRORS.items():
            if token.startswith(prefix):
                resp = web.json_response(_fcm_error(status, rpc, code, text), status=status)
                if retry_after:
                    resp.headers["Retry-After"] = retry_after
                return resp
        return web.json_response(
            {"name": f"projects/{self.project_id}/messages/{uuid.uuid4().int % 10**19}"}
        )
