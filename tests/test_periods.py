"""Billing periods in UTC: calendar months and anniversary anchors (a missing day falls to the last)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from meterguard.periods import Period, day_id, period_for, period_named, rfc3339


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def check(period: Period, pid: str, start: datetime, end: datetime) -> None:
    assert (period.id, period.start, period.end) == (pid, start, end)


# -- calendar ---------------------------------------------------------------------------------------


def test_calendar_mid_month() -> None:
    check(period_for(utc(2026, 3, 15, 12, 30)), "2026-03", utc(2026, 3, 1), utc(2026, 4, 1))


def test_calendar_first_second_of_month() -> None:
    check(period_for(utc(2026, 3, 1, 0, 0, 0)), "2026-03", utc(2026, 3, 1), utc(2026, 4, 1))


def test_calendar_last_second_of_month() -> None:
    check(period_for(utc(2026, 3, 31, 23, 59, 59)), "2026-03", utc(2026, 3, 1), utc(2026, 4, 1))
    check(period_for(utc(2026, 3, 31, 23, 59, 59, 999999)), "2026-03", utc(2026, 3, 1), utc(2026, 4, 1))
    check(period_for(utc(2026, 2, 28, 23, 59, 59)), "2026-02", utc(2026, 2, 1), utc(2026, 3, 1))


def test_calendar_december_to_january() -> None:
    check(period_for(utc(2026, 12, 15)), "2026-12", utc(2026, 12, 1), utc(2027, 1, 1))
    check(period_for(utc(2026, 12, 31, 23, 59, 59)), "2026-12", utc(2026, 12, 1), utc(2027, 1, 1))
    check(period_for(utc(2027, 1, 1)), "2027-01", utc(2027, 1, 1), utc(2027, 2, 1))


def test_calendar_from_epoch_seconds_int_and_float() -> None:
    moment = utc(2026, 4, 30, 23, 59, 59)
    ts = int(moment.timestamp())
    check(period_for(ts), "2026-04", utc(2026, 4, 1), utc(2026, 5, 1))
    check(period_for(ts + 0.999), "2026-04", utc(2026, 4, 1), utc(2026, 5, 1))
    check(period_for(ts + 1), "2026-05", utc(2026, 5, 1), utc(2026, 6, 1))
    period = period_for(ts)
    assert period.start_ts == int(utc(2026, 4, 1).timestamp()) == 1775001600
    assert period.end_ts == int(utc(2026, 5, 1).timestamp())


def test_period_is_frozen() -> None:
    period = period_for(utc(2026, 1, 5))
    with pytest.raises(AttributeError):
        period.id = "2026-02"  # type: ignore[misc]


# -- anniversary ------------------------------------------------------------------------------------


def test_anchor_15_after_and_before_the_anchor() -> None:
    check(period_for(utc(2026, 3, 20), 15), "2026-03", utc(2026, 3, 15), utc(2026, 4, 15))
    check(period_for(utc(2026, 3, 10), 15), "2026-02", utc(2026, 2, 15), utc(2026, 3, 15))
    check(period_for(utc(2026, 3, 15), 15), "2026-03", utc(2026, 3, 15), utc(2026, 4, 15))


def test_moment_just_before_an_anchor_belongs_to_the_previous_period() -> None:
    check(period_for(utc(2026, 3, 14, 23, 59, 59), 15), "2026-02", utc(2026, 2, 15), utc(2026, 3, 15))
    check(period_for(utc(2026, 3, 14, 23, 59, 59, 999999), 15), "2026-02", utc(2026, 2, 15), utc(2026, 3, 15))
    ts = utc(2026, 3, 15).timestamp()
    assert period_for(ts - 1, 15).id == "2026-02"
    assert period_for(ts - 0.001, 15).id == "2026-02"
    assert period_for(ts, 15).id == "2026-03"


def test_anchor_15_in_january_rolls_back_to_december() -> None:
    check(period_for(utc(2027, 1, 3), 15), "2026-12", utc(2026, 12, 15), utc(2027, 1, 15))
    check(period_for(utc(2026, 12, 20), 15), "2026-12", utc(2026, 12, 15), utc(2027, 1, 15))


def test_anchor_31_february_leap_year() -> None:
    # 2028 is a leap year: the February period starts on the 29th.
    check(period_for(utc(2028, 2, 29, 12), 31), "2028-02", utc(2028, 2, 29), utc(2028, 3, 31))
    check(period_for(utc(2028, 2, 28, 23, 59, 59), 31), "2028-01", utc(2028, 1, 31), utc(2028, 2, 29))
    check(period_for(utc(2028, 3, 30), 31), "2028-02", utc(2028, 2, 29), utc(2028, 3, 31))
    check(period_for(utc(2028, 3, 31), 31), "2028-03", utc(2028, 3, 31), utc(2028, 4, 30))


def test_anchor_31_february_non_leap_year() -> None:
    check(period_for(utc(2027, 2, 28), 31), "2027-02", utc(2027, 2, 28), utc(2027, 3, 31))
    check(period_for(utc(2027, 2, 27, 23, 59, 59), 31), "2027-01", utc(2027, 1, 31), utc(2027, 2, 28))


def test_anchor_31_april_falls_to_the_30th() -> None:
    check(period_for(utc(2026, 4, 30), 31), "2026-04", utc(2026, 4, 30), utc(2026, 5, 31))
    check(period_for(utc(2026, 4, 29, 23, 59, 59), 31), "2026-03", utc(2026, 3, 31), utc(2026, 4, 30))
    check(period_for(utc(2026, 5, 30), 31), "2026-04", utc(2026, 4, 30), utc(2026, 5, 31))


def test_anchor_30_in_march_after_a_february_period() -> None:
    # February 2027 has 28 days: its period starts on the 28th and ends on March 30 (not the 28th).
    check(period_for(utc(2027, 3, 1), 30), "2027-02", utc(2027, 2, 28), utc(2027, 3, 30))
    check(period_for(utc(2027, 3, 29, 23, 59, 59), 30), "2027-02", utc(2027, 2, 28), utc(2027, 3, 30))
    check(period_for(utc(2027, 3, 30), 30), "2027-03", utc(2027, 3, 30), utc(2027, 4, 30))


@pytest.mark.parametrize("anchor", [1, 15, 28, 29, 30, 31])
def test_anchor_periods_tile_time_without_gaps(anchor: int) -> None:
    """Two years day by day: every moment lies in its period; each period ends where the next starts."""
    moment = utc(2027, 1, 1, 6)
    previous: Period | None = None
    while moment < utc(2029, 1, 1):
        period = period_for(moment, anchor)
        assert period.start <= moment < period.end
        assert period.id == f"{period.start.year:04d}-{period.start.month:02d}"
        if previous is not None and period != previous:
            assert period.start == previous.end
        previous = period
        moment += timedelta(days=1)


@pytest.mark.parametrize("anchor", [0, 32, -1])
def test_anchor_out_of_range(anchor: int) -> None:
    with pytest.raises(ValueError, match="anchor_day"):
        period_for(utc(2026, 1, 1), anchor)


def test_non_utc_aware_moment_lands_in_its_utc_period() -> None:
    # 2026-02-28 23:30 at UTC-2 is 2026-03-01 01:30 UTC: the March period.
    moment = datetime(2026, 2, 28, 23, 30, tzinfo=timezone(timedelta(hours=-2)))
    period = period_for(moment)
    assert period.start <= moment < period.end
    assert period.id == "2026-03"


# -- period_named -----------------------------------------------------------------------------------


def test_period_named_calendar() -> None:
    check(period_named("2026-03"), "2026-03", utc(2026, 3, 1), utc(2026, 4, 1))
    check(period_named("2026-12"), "2026-12", utc(2026, 12, 1), utc(2027, 1, 1))


def test_period_named_with_anchors() -> None:
    check(period_named("2026-04", 31), "2026-04", utc(2026, 4, 30), utc(2026, 5, 31))
    check(period_named("2028-02", 31), "2028-02", utc(2028, 2, 29), utc(2028, 3, 31))
    check(period_named("2027-02", 30), "2027-02", utc(2027, 2, 28), utc(2027, 3, 30))
    check(period_named("2026-12", 15), "2026-12", utc(2026, 12, 15), utc(2027, 1, 15))


@pytest.mark.parametrize("anchor", [1, 15, 31])
def test_period_named_agrees_with_period_for(anchor: int) -> None:
    for month in range(1, 13):
        named = period_named(f"2027-{month:02d}", anchor)
        assert period_for(named.start, anchor) == named
        assert period_for(named.end - timedelta(seconds=1), anchor) == named


@pytest.mark.parametrize(
    "bad",
    [
        "2026-3",
        "26-03",
        "2026-13",
        "2026-00",
        "2026/03",
        "2026-03-01",
        "",
        "2026",
        "abcd-ef",
        "2026-3a",
        "20260-1",
    ],
)
def test_period_named_refuses_malformed_ids(bad: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        period_named(bad)


@pytest.mark.parametrize("bad", ["2026-+3", "2026- 3", "2_26-03", "+999-01", "2026-\u0660\u0663"])
def test_period_named_refuses_ids_int_accepts(bad: str) -> None:
    with pytest.raises(ValueError, match="YYYY-MM"):
        period_named(bad)


# -- day_id and rfc3339 -----------------------------------------------------------------------------


def test_day_id() -> None:
    assert day_id(utc(2026, 3, 1).timestamp()) == "2026-03-01"
    assert day_id(utc(2026, 3, 1).timestamp() - 0.5) == "2026-02-28"
    assert day_id(utc(2026, 12, 31, 23, 59, 59).timestamp()) == "2026-12-31"
    assert day_id(0) == "1970-01-01"


def test_rfc3339() -> None:
    assert rfc3339(utc(2026, 3, 1)) == "2026-03-01T00:00:00Z"
    assert rfc3339(utc(2026, 3, 1, 4, 5, 6, 789000)) == "2026-03-01T04:05:06Z"
    east = datetime(2026, 3, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(east) == "2026-02-28T23:30:00Z"
