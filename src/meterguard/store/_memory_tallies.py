"""The memory store's counters: a customer's tallies per period and day, the cells a request
counts in, and the window states a decision reads. Plain data and arithmetic, no I/O: the
store (memory.py) owns the tables these live in.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ..plans import Window
from ..windows import wait
from .base import MAX_UNLISTED_ROUTES, OTHER_ROUTE, Counts, WindowState

MAX_CACHED_CELLS = 1024  # (route, key) entries of an account's cells; past this they are looked up anew


# Named, not lambdas: mypyc (scripts/compile.py) fails on a lambda inside a dataclass field's default.
def _zero_pair() -> list[int]:
    return [0, 0]


def _counts() -> defaultdict[str, int]:
    return defaultdict(int)


def _pairs() -> defaultdict[str, list[int]]:
    return defaultdict(_zero_pair)


@dataclass(slots=True)
class Tally:
    calls: int = 0
    records: int = 0
    replays: int = 0
    uncounted: int = 0
    rejected: defaultdict[str, int] = field(default_factory=_counts)
    by_route: defaultdict[str, list[int]] = field(default_factory=_pairs)
    by_key: defaultdict[str, list[int]] = field(default_factory=_pairs)
    unlisted: set[str] = field(default_factory=set)


def route_label(tally: Tally, route: str, listed: bool) -> str:
    if listed or route in tally.unlisted:
        return route
    if len(tally.unlisted) >= MAX_UNLISTED_ROUTES:
        return OTHER_ROUTE
    tally.unlisted.add(route)
    return route


class Cells:
    """Where the usage of one (customer, period, day, route, key) is counted: the period's and
    the day's tallies and their by-route and by-key cells, looked up once, so that counting
    calls or records is a few additions instead of two label checks and four dict lookups.

    The cells are the tallies' own lists (the tallies stay the record usage() and daily() read).
    A route's label is fixed once looked up: a label a tally has taken stays in its ``unlisted``
    set, and a tally that had no room left for it has none later (the set only grows).
    """

    __slots__ = ("period", "day", "label", "period_route", "period_key", "day_route", "day_key")

    def __init__(self, period: Tally, day: Tally, route: str, listed: bool, key_id: str) -> None:
        self.period = period
        self.day = day
        # unmatched routes' labels are bounded per period (and per day); the period's is the event's
        self.label = route_label(period, route, listed)
        self.period_route = period.by_route[self.label]
        self.period_key = period.by_key[key_id]
        self.day_route = day.by_route[route_label(day, route, listed)]
        self.day_key = day.by_key[key_id]

    # Calls and records are added apart: an admission counts calls only and a response records
    # only, and an addition of 0 to each cell would cost as much as a useful one.
    def add_calls(self, calls: int) -> None:
        self.period.calls += calls
        self.day.calls += calls
        self.period_route[0] += calls
        self.period_key[0] += calls
        self.day_route[0] += calls
        self.day_key[0] += calls

    def add_records(self, records: int) -> None:
        self.period.records += records
        self.day.records += records
        self.period_route[1] += records
        self.period_key[1] += records
        self.day_route[1] += records
        self.day_key[1] += records


@dataclass(slots=True)
class Account:
    """One customer's counters as a decision reaches them: its rate windows, and the tallies of
    the period and the day it was last decided in (the same objects as in the store's tables,
    which stay the record), so that a decision does one lookup by customer instead of three.

    ``cells``: the Cells of that period and day by (route, listed, key id); they belong to those
    two tallies, so they are dropped whenever the account moves to another period or day."""

    windows: dict[str, dict[int, int]] = field(default_factory=dict)  # window counter -> slot -> units
    period_id: str = ""
    period: Tally = field(default_factory=Tally)
    day_id: str = ""
    day: Tally = field(default_factory=Tally)
    cells: dict[tuple[str, bool, str], Cells] = field(default_factory=dict)


def window_states(
    counted: list[tuple[Window, int, int, float, float, dict[int, int], int]], weight: int, sliding: bool
) -> tuple[WindowState, ...]:
    """What each window reads after a refused decision: the counts as they were.

    windows.remaining and windows.reset_after, written out (the same expressions, so the same
    floats), with the estimate (``used``) already known. An admission builds its states as it
    reads the windows (MemoryStore._decide).
    """
    states = []
    for window, previous, current, elapsed, used, _, _ in counted:
        limit, seconds = window.limit, window.seconds
        if used + weight > limit:
            reset = wait(previous, current, elapsed, seconds, limit, weight, sliding)
        else:
            reset = seconds - elapsed
        left = math.floor(limit - used + 1e-9)
        states.append(WindowState(window, left if left > 0 else 0, reset))
    return tuple(states)


def as_counts(table: dict[str, list[int]]) -> dict[str, Counts]:
    # a cell back at zero (a refunded call) is as if it never was, as on Redis
    return {name: Counts(calls, records) for name, (calls, records) in table.items() if calls or records}
