"""API key format (CONTRACT.md section 10): prefix, base62 body, CRC32 checksum, SHA-256 storage."""

from __future__ import annotations

import hashlib
import re
import string
import zlib

import pytest

from meterguard import keys

# Written out independently of the module so a wrong alphabet order in keys.py is caught.
B62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_RE = re.compile(r"mg_live_[0-9A-Za-z]{38}\Z")


def my_base62(number: int, width: int) -> str:
    out = ""
    while number:
        number, digit = divmod(number, 62)
        out = B62[digit] + out
    return out.rjust(width, "0")


def make_key(body: str) -> str:
    """A well-formed key for a chosen 32-character body, checksummed without the module."""
    assert len(body) == 32
    head = "mg_live_" + body
    return head + my_base62(zlib.crc32(head.encode()), 6)


def test_alphabet_is_digits_upper_lower() -> None:
    assert keys.ALPHABET == B62
    assert keys.KEY_LENGTH == 46


@pytest.mark.parametrize(
    ("number", "width", "expected"),
    [
        (0, 6, "000000"),
        (61, 1, "z"),
        (62, 2, "10"),
        (62 * 62 - 1, 2, "zz"),
        (2**32 - 1, 6, "4gfFC3"),  # the largest CRC32 still fits in 6 characters
        (10, 3, "00A"),
        (36, 1, "a"),
    ],
)
def test_base62(number: int, width: int, expected: str) -> None:
    assert keys.base62(number, width) == expected
    assert my_base62(number, width) == expected


def test_generated_key_is_well_formed() -> None:
    key = keys.generate_key()
    assert len(key) == 46
    assert key.startswith("mg_live_")
    assert KEY_RE.match(key), key
    assert keys.is_well_formed(key)


def test_generated_checksum_is_base62_crc32_of_everything_before_it() -> None:
    for _ in range(200):
        key = keys.generate_key()
        head, check = key[:-6], key[-6:]
        assert len(head) == 40
        assert check == my_base62(zlib.crc32(head.encode("ascii")), 6)


def test_checksum_function_matches_independent_computation() -> None:
    head = "mg_live_" + "0" * 32
    assert keys.checksum(head) == my_base62(zlib.crc32(head.encode()), 6)
    # zero-padding: find a body whose CRC32 is small enough to need padding
    assert keys.checksum("") == "000000"  # crc32(b"") == 0


def test_independently_built_key_is_accepted() -> None:
    key = make_key("abcdefghijklmnopqrstuvwxyzABCDEF")
    assert keys.is_well_formed(key)
    key = make_key("0" * 32)
    assert keys.is_well_formed(key)


def test_thousand_keys_are_distinct() -> None:
    generated = {keys.generate_key() for _ in range(1000)}
    assert len(generated) == 1000
    # and their bodies are spread over the alphabet, not a handful of characters
    used = set("".join(key[8:40] for key in generated))
    assert used == set(B62)


def _other_chars(char: str) -> list[str]:
    """A few replacements for ``char``: neighbours in the alphabet and a case flip."""
    candidates = {B62[(B62.index(char) + 1) % 62], B62[(B62.index(char) + 31) % 62]} if char in B62 else {"x"}
    if char.swapcase() != char:
        candidates.add(char.swapcase())
    candidates.discard(char)
    return sorted(candidates)


@pytest.mark.parametrize("seed_body", ["abcdefghijklmnopqrstuvwxyzABCDEF", "Z" * 32, "0123456789" * 3 + "zz"])
def test_one_changed_character_anywhere_is_refused(seed_body: str) -> None:
    key = make_key(seed_body)
    assert keys.is_well_formed(key)
    for position in range(len(key)):
        for replacement in _other_chars(key[position]):
            changed = key[:position] + replacement + key[position + 1 :]
            assert changed != key
            assert not keys.is_well_formed(changed), (position, changed)


def test_swapping_two_adjacent_body_characters_is_refused() -> None:
    key = make_key("abcdefghijklmnopqrstuvwxyzABCDEF")
    for position in range(8, 39):
        swapped = key[:position] + key[position + 1] + key[position] + key[position + 2 :]
        assert not keys.is_well_formed(swapped), position


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda k: "mg_test_" + k[8:], id="test-prefix"),
        pytest.param(lambda k: "MG_LIVE_" + k[8:], id="upper-prefix"),
        pytest.param(lambda k: "xx" + k[2:], id="prefix-mangled"),
        pytest.param(lambda k: k[:-1], id="one-short"),
        pytest.param(lambda k: k + "0", id="one-long"),
        pytest.param(lambda k: k[:20] + k[21:] + "0", id="char-dropped-padded"),
        pytest.param(lambda k: "", id="empty"),
        pytest.param(lambda k: "mg_live_", id="prefix-only"),
        pytest.param(lambda k: k[:10] + "-" + k[11:], id="dash"),
        pytest.param(lambda k: k[:10] + "_" + k[11:], id="underscore"),
        pytest.param(lambda k: k[:10] + " " + k[11:], id="space"),
        pytest.param(lambda k: k[:10] + "é" + k[11:], id="latin1"),
        pytest.param(lambda k: k[:10] + "\uff10" + k[11:], id="fullwidth-digit"),
        pytest.param(lambda k: k[:10] + "\u0663" + k[11:], id="arabic-indic-digit"),
        pytest.param(lambda k: k[:-6] + "\u0661\u0662\u0663\u0664\u0665\u0666", id="unicode-checksum"),
        pytest.param(lambda k: " " + k[:-1], id="leading-space"),
        pytest.param(lambda k: k + "\n", id="trailing-newline"),
    ],
)
def test_malformed_keys_are_refused(transform: object) -> None:
    key = make_key("abcdefghijklmnopqrstuvwxyzABCDEF")
    assert keys.is_well_formed(key)
    bad = transform(key)  # type: ignore[operator]
    assert not keys.is_well_formed(bad)


def test_valid_checksum_over_wrong_prefix_is_still_refused() -> None:
    # Checksummed correctly, but for a prefix that is not ours: the prefix check must catch it.
    head = "mg_test_" + "a" * 32
    assert not keys.is_well_formed(head + my_base62(zlib.crc32(head.encode()), 6))


def test_non_base62_body_with_recomputed_checksum_is_refused() -> None:
    head = "mg_live_" + "a" * 31 + "-"
    assert not keys.is_well_formed(head + my_base62(zlib.crc32(head.encode()), 6))


def test_hash_key_is_sha256_hexdigest() -> None:
    key = make_key("abcdefghijklmnopqrstuvwxyzABCDEF")
    assert keys.hash_key(key) == "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", keys.hash_key(key))
    assert keys.hash_key(key) != keys.hash_key(make_key("Z" * 32))


def test_key_id_is_stable_short_and_does_not_reveal_the_key() -> None:
    key = make_key("abcdefghijklmnopqrstuvwxyzABCDEF")
    key_hash = keys.hash_key(key)
    key_id = keys.key_id_for(key_hash)
    assert key_id == keys.key_id_for(keys.hash_key(key))  # stable
    assert key_id == "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]
    assert len(key_id) <= 20
    assert key not in key_id
    # no run of 6 characters of the secret part appears in the id
    body = key[8:]
    assert not any(body[i : i + 6] in key_id for i in range(len(body) - 5))
    assert "mg_live_" not in key_id


def test_key_ids_differ_between_keys() -> None:
    ids = {keys.key_id_for(keys.hash_key(keys.generate_key())) for _ in range(500)}
    assert len(ids) == 500


def test_display_prefix_shows_too_little_to_use_the_key() -> None:
    key = make_key("abcdefghijklmnopqrstuvwxyzABCDEF")
    shown = keys.display_prefix(key)
    assert shown == "mg_live_abcd"
    assert not keys.is_well_formed(shown)
