"""API key format: ``mg_live_`` + 32 base62 characters + a 6-character base62 CRC32 checksum.

The checksum (GitHub's token format) lets a mistyped or forged key be refused with no store
round trip. Keys are high-entropy, so a plain SHA-256 is the right storage hash: nothing to
brute-force, and a lookup by hash stays one GET.
"""

from __future__ import annotations

import hashlib
import secrets
import zlib

PREFIX = "mg_live_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 32
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
HASH_PREFIX = "sha256:"
_ALPHABET_SET = frozenset(ALPHABET)


def base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(text: str) -> str:
    return base62(zlib.crc32(text.encode("ascii")), CHECKSUM_LENGTH)


def generate_key() -> str:
    body = PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return body + checksum(body)


def is_well_formed(key: str) -> bool:
    """Prefix, length, alphabet and checksum: everything checkable without I/O."""
    if len(key) != KEY_LENGTH or not key.startswith(PREFIX):
        return False
    if not _ALPHABET_SET.issuperset(key[len(PREFIX) :]):
        return False
    return key[-CHECKSUM_LENGTH:] == checksum(key[:-CHECKSUM_LENGTH])


def hash_key(key: str) -> str:
    """The stored form of a key: ``sha256:<hex>``, as written in plans.yaml."""
    return HASH_PREFIX + hashlib.sha256(key.encode("ascii")).hexdigest()


def key_id_for(key_hash: str) -> str:
    """A short public id for a key, derived from its hash (safe to log and show)."""
    return "key_" + key_hash.removeprefix(HASH_PREFIX)[:12]


def display_prefix(key: str) -> str:
    """What a key list shows so a person can recognise a key: never enough to use it."""
    return key[: len(PREFIX) + 4]
