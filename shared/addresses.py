"""Addresses as tongda compares and keys them: normalised, then hashed with a secret key.

A phone number or email never appears in a Kafka key or a Redis key name: where one must
identify a sender (an unknown sender's inquiry key, the router's sender → customer index),
it is `address_hash(key, address)`, an HMAC-SHA256 with a key from configuration, so a
leaked key name cannot be reversed by hashing a list of phone numbers.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

import phonenumbers


def normalize_address(address: str, default_region: str = "CN") -> str:
    """The canonical form of a phone number (E.164) or an email (lower-cased, trimmed).

    Width variants (full-width digits, `＋`), spaces and dashes are folded first; a national
    number is read in `default_region`. Anything that is neither a parseable phone number
    nor an email comes back folded and lower-cased, so it still compares equal to itself.
    """
    folded = unicodedata.normalize("NFKC", address).strip()
    if "@" in folded:
        return folded.lower()
    try:
        number = phonenumbers.parse(folded, None if folded.startswith("+") else default_region)
    except phonenumbers.NumberParseException:
        return folded.lower()
    if not phonenumbers.is_possible_number(number):
        return folded.lower()
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def address_hash(key: bytes, address: str) -> str:
    """The keyed hash (hex) of a normalised address: usable in Kafka and Redis keys."""
    return hmac.new(key, normalize_address(address).encode(), hashlib.sha256).hexdigest()
