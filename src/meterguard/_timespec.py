"""Times an operator types for key expiry and rotation: durations ("24h", "30d") and RFC 3339 instants."""

from __future__ import annotations

import re
from datetime import datetime

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"([0-9]{1,6})([smhdw])")
_DURATIONS = re.compile(r"(?:[0-9]{1,6}[smhdw])+\Z")
# RFC 3339 section 5.6, with the offset required: a time without one means a different instant
# on every machine. datetime.fromisoformat alone also reads "2027-01-01" and "20270101T00".
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


def parse_duration(text: str) -> int:
    """``"24h"``, ``"90m"``, ``"1w2d"``, ``"0"``: whole seconds; ValueError otherwise."""
    cleaned = text.strip().lower()
    if cleaned == "0":
        return 0
    if not _DURATIONS.match(cleaned):
        raise ValueError(f"{text!r} is not a duration such as 90m, 24h, 30d or 1w2d")
    return sum(int(number) * UNITS[unit] for number, unit in _DURATION.findall(cleaned))


def parse_instant(text: str) -> float:
    """An RFC 3339 time with its offset (``2027-01-01T00:00:00Z``) as epoch seconds; ValueError otherwise."""
    cleaned = text.strip()
    if not _RFC3339.match(cleaned):
        raise ValueError(f"{text!r} is not an RFC 3339 time such as 2027-01-01T00:00:00Z")
    try:
        return datetime.fromisoformat(cleaned.upper().replace(" ", "T")).timestamp()
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not a valid time") from None


def parse_expiry(text: str, now: float) -> float:
    """An RFC 3339 time, or a duration from ``now``: when a key stops working, as epoch seconds."""
    cleaned = text.strip()
    if _RFC3339.match(cleaned):
        return parse_instant(cleaned)
    try:
        return now + parse_duration(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is neither an RFC 3339 time (2027-01-01T00:00:00Z) nor a duration (30d)") from None
