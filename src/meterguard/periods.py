"""Billing periods in UTC: calendar months, or monthly from a customer's anchor day."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

_PERIOD_ID = re.compile(r"[0-9]{4}-[0-9]{2}")  # ASCII digits only: int() would also take "+3", " 3", "٠٣"


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open billing period ``[start, end)``; ``id`` is ``YYYY-MM`` of the month it starts in."""

    id: str
    start: datetime
    end: datetime
    start_ts: int = field(init=False, compare=False)  # epoch seconds, computed once: read per request
    end_ts: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_ts", int(self.start.timestamp()))
        object.__setattr__(self, "end_ts", int(self.end.timestamp()))


def _month_start(year: int, month: int, anchor_day: int) -> datetime:
    # A day the month lacks (31 in April) falls to its last day, as card issuers do.
    day = min(anchor_day, calendar.monthrange(year, month)[1])
    return datetime(year, month, day, tzinfo=UTC)


def _shift(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def period_for(moment: datetime | float, anchor_day: int = 1) -> Period:
    """The period containing ``moment``; ``anchor_day`` 1 is the calendar month."""
    if not 1 <= anchor_day <= 31:
        raise ValueError(f"anchor_day must be 1..31, not {anchor_day}")
    when = datetime.fromtimestamp(moment, UTC) if isinstance(moment, int | float) else moment.astimezone(UTC)
    year, month = when.year, when.month
    start = _month_start(year, month, anchor_day)
    if when < start:
        year, month = _shift(year, month, -1)
        start = _month_start(year, month, anchor_day)
    end = _month_start(*_shift(year, month, 1), anchor_day)
    return Period(id=f"{year:04d}-{month:02d}", start=start, end=end)


def period_named(period_id: str, anchor_day: int = 1) -> Period:
    """The period that starts in month ``YYYY-MM`` (raises ValueError on a malformed id)."""
    if not _PERIOD_ID.fullmatch(period_id) or not 1 <= int(period_id[5:]) <= 12:
        raise ValueError(f"period must be YYYY-MM, not {period_id!r}")
    year, month = int(period_id[:4]), int(period_id[5:])
    start = _month_start(year, month, anchor_day)
    return Period(id=period_id, start=start, end=_month_start(*_shift(year, month, 1), anchor_day))


def day_id(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d")


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
