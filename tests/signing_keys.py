"""The signing keys every test's services use (shared/signing.py): two accepted, the newer
one signing, as in the middle of a rotation."""

from __future__ import annotations

import json

KEYS = {
    "test-2": "a-test-signing-key-that-signs-0123456789",
    "test-1": "an-older-test-key-still-accepted-0123456789",
}
SIGNING: dict[str, object] = {"signing_keys": KEYS, "signing_key_id": "test-2"}
SIGNING_ENV = {"TONGDA_SIGNING_KEYS": json.dumps(KEYS), "TONGDA_SIGNING_KEY_ID": "test-2"}
