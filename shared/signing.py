"""Signatures on tongda's internal records: who may write a dispatch topic or the router inbox.

Anyone able to write `tongda.router.inbox` could otherwise mark a notification delivered, and
anyone able to write a dispatch topic could send any text to any number. Every internal record
therefore carries the header `tongda-signature: <key id>:<hex HMAC-SHA256>` over its key and
value, made with a key from configuration (`TONGDA_SIGNING_KEYS`, from a Secret); a consumer
refuses a record without it, with an unknown key id or with a wrong digest: it is dead-lettered
with `error: bad_signature` and changes nothing.

Rotation: `signing_keys` lists every key accepted, by id; `signing_key_id` names the one that
signs. Add the new key everywhere, then switch `signing_key_id`, then drop the old key once no
record signed with it can still be read (the topics' retention).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from aiokafka.structs import ConsumerRecord

from shared.config import CommonSettings, Topics
from shared.errors import ConfigError, InvalidEvent

SIGNATURE_HEADER = "tongda-signature"
MIN_KEY_BYTES = 32


def internal_topics(topics: Topics) -> frozenset[str]:
    """The topics whose records are signed: the dispatch topics and the router inbox."""
    from shared.contract.models import CHANNELS

    return frozenset([topics.router_inbox, *(topics.dispatch(c) for c in CHANNELS)])


class Signer:
    """Signs with one key; verifies with any key it knows."""

    def __init__(self, keys: Mapping[str, bytes], key_id: str) -> None:
        if key_id not in keys:
            raise ConfigError(f"signing key id {key_id!r} is not among the signing keys")
        # one keyed HMAC per key, copied for each record: the key's setup is done once
        self._macs = {kid: hmac.new(secret, digestmod="sha256") for kid, secret in keys.items()}
        self.key_id = key_id
        self._mac = self._macs[key_id]
        self._prefix = f"{key_id}:".encode()

    @classmethod
    def from_settings(cls, settings: CommonSettings) -> Signer:
        """The signer the settings configure; ConfigError (exit 2) if there is none."""
        keys = {kid: v.get_secret_value().encode() for kid, v in settings.signing_keys.items()}
        if not keys:
            raise ConfigError(
                "no signing key: set TONGDA_SIGNING_KEYS (JSON, key id → secret of at least "
                f"{MIN_KEY_BYTES} bytes) from a Secret; `make up` generates one"
            )
        for kid, secret in keys.items():
            if not kid or ":" in kid:
                raise ConfigError(f"signing key id {kid!r}: must be non-empty, without ':'")
            if len(secret) < MIN_KEY_BYTES:
                raise ConfigError(f"signing key {kid!r} is shorter than {MIN_KEY_BYTES} bytes")
        key_id = settings.signing_key_id
        if not key_id:
            if len(keys) > 1:
                raise ConfigError("several signing keys: set TONGDA_SIGNING_KEY_ID to one")
            (key_id,) = keys
        return cls(keys, key_id)

    def signature(self, key: bytes | None, value: bytes | None) -> bytes:
        """The header value signing (key, value) with the current key."""
        return self._prefix + _digest(self._mac, key, value).encode()

    def header(self, key: bytes | None, value: bytes | None) -> tuple[str, bytes]:
        """The signature header for (key, value)."""
        return SIGNATURE_HEADER, self.signature(key, value)

    def verify(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Raise InvalidEvent `bad_signature` unless `record` is signed by a known key."""
        found = [v for k, v in (record.headers or ()) if k == SIGNATURE_HEADER]
        if len(found) != 1:
            raise InvalidEvent(
                "bad_signature",
                f"{len(found)} {SIGNATURE_HEADER} headers: an internal record needs one",
            )
        raw_kid, _, digest = found[0].partition(b":")
        kid = raw_kid.decode(errors="replace")
        mac = self._macs.get(kid)
        if mac is None:
            raise InvalidEvent("bad_signature", f"unknown signing key id {kid[:64]!r}")
        if not hmac.compare_digest(digest, _digest(mac, record.key, record.value).encode()):
            raise InvalidEvent("bad_signature", f"signature does not match (key id {kid!r})")


def _digest(mac: hmac.HMAC, key: bytes | None, value: bytes | None) -> str:
    """HMAC-SHA256 of (key, value) with `mac`'s key: `mac` is copied, never updated."""
    k, v = key or b"", value or b""
    mac = mac.copy()
    # the key's length first, so no (key, value) pair signs as another
    mac.update(len(k).to_bytes(4, "big") + k + v)
    return mac.hexdigest()
