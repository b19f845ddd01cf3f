"""HTTP digest authentication for SIP (RFC 3261 §22, RFC 2617, RFC 8760): the client side.

MD5 and SHA-256 (and their `-sess` variants), with `qop=auth` when the challenge offers it.
"""

from __future__ import annotations

import hashlib
import re
import secrets

_PARAM_RE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)')
_HASHES = {"MD5": "md5", "SHA-256": "sha256"}


def parse_challenge(value: str) -> dict[str, str] | None:
    """`Digest realm="x", nonce="y", ...` → its parameters (lower-case names); None if not
    a digest challenge this client can answer."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params = {k.lower(): v.strip('"') for k, v in _PARAM_RE.findall(rest)}
    algorithm = params.get("algorithm", "MD5").upper().removesuffix("-SESS")
    if "nonce" not in params or "realm" not in params or algorithm not in _HASHES:
        return None
    return params


def authorization(
    challenge: dict[str, str],
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The `Authorization` / `Proxy-Authorization` header value answering `challenge`."""
    algorithm = challenge.get("algorithm", "MD5")
    name = _HASHES[algorithm.upper().removesuffix("-SESS")]

    def h(text: str) -> str:
        return hashlib.new(name, text.encode()).hexdigest()

    realm, nonce = challenge["realm"], challenge["nonce"]
    cnonce = cnonce or secrets.token_hex(8)
    ha1 = h(f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    qops = [q.strip() for q in challenge.get("qop", "").split(",") if q.strip()]
    fields = [
        f'username="{username}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
    ]
    if "auth" in qops:
        count = f"{nc:08x}"
        response = h(f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
        fields += [f'response="{response}"', "qop=auth", f"nc={count}", f'cnonce="{cnonce}"']
    else:
        fields.append(f'response="{h(f"{ha1}:{nonce}:{ha2}")}"')
        if algorithm.upper().endswith("-SESS"):
            fields.append(f'cnonce="{cnonce}"')
    fields.append(f"algorithm={algorithm}")
    if "opaque" in challenge:
        fields.append(f'opaque="{challenge["opaque"]}"')
    return "Digest " + ", ".join(fields)
