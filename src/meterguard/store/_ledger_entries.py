"""What the write path carries: admissions, usage rows, carried batches, and the store's replies.

The ledger (store/_ledger.py) queues and sequences these; the store (store/_redis_meter.py) encodes
them into batches and reads the replies back; the spool (store/_spool.py) keeps them on disk. They
live apart from the ledger so that each of those reads the same types without importing the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreUnavailable
from ..plans import Window
from .base import AdmitRequest, Alerting


@dataclass(slots=True)
class Admission:
    """An admission the writer sent (or will send); ``served`` when a lost reply still serves it."""

    request: AdmitRequest
    served: bool


@dataclass(slots=True)
class Pending:
    admission: Admission
    future: asyncio.Future[tuple[list[Any], float]]
    give_up: float  # loop time


UsageKey = tuple[str, str, int, str]  # customer, period id, period end, day
RowKey = tuple[str, bool, str]  # route label, listed, key id


@dataclass(slots=True)
class Usage:
    """Usage rows of one customer, period and day, and leased units coming back."""

    key: UsageKey
    rows: dict[RowKey, list[int]] = field(default_factory=dict)  # -> [calls, records]
    consumed: int = 0  # leased units used: reserved -> counted
    returned: int = 0  # leased units given back unused
    windows: dict[tuple[Window, int], int] = field(default_factory=dict)  # (window, slot) -> units back
    unmetered: int = 0  # requests served whose usage could not be kept
    uncounted: int = 0  # responses whose records could not be counted (store.base.Settlement)
    alerting: Alerting | None = None  # the thresholds to check once this usage is counted
    acks: list[str] = field(default_factory=list)  # alerts delivered: the store stops reporting them
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def add_row(self, row: RowKey, calls: int, records: int) -> None:
        counts = self.rows.get(row)
        if counts is None:
            self.rows[row] = [calls, records]
        else:
            counts[0] += calls
            counts[1] += records

    def merge(self, other: Usage) -> None:
        for row, (calls, records) in other.rows.items():
            self.add_row(row, calls, records)
        self.consumed += other.consumed
        self.returned += other.returned
        for slot, units in other.windows.items():
            self.windows[slot] = self.windows.get(slot, 0) + units
        self.unmetered += other.unmetered
        self.uncounted += other.uncounted
        self.alerting = other.alerting or self.alerting
        self.acks.extend(other.acks)
        self.waiters.extend(other.waiters)

    @property
    def size(self) -> int:
        return len(self.rows) + len(self.windows) + 1


@dataclass(slots=True)
class Carry:
    """A batch given up on, as far as one customer is concerned."""

    seq: int
    admissions: list[Admission]
    usages: list[Usage]


@dataclass(slots=True)
class Work:
    """What one batch carries for one customer."""

    customer: str
    admissions: list[Admission] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    carries: list[Carry] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)


@dataclass(slots=True)
class Reply:
    """A store's answer for one customer's work: ``ok``/``dup`` with the admissions' replies, or ``stale``."""

    status: str
    admissions: list[Any]
    sec: int
    usec: int


# Runner(seq, deadline in store ms or 0, works) -> (store sec, store usec, reply per work)
Runner = Callable[[int, int, Sequence[Work]], Awaitable[tuple[int, int, list[Reply]]]]


class Expired(StoreUnavailable):
    """The store ran the admission after its deadline, or never within it."""


def served_usage(request: AdmitRequest) -> Usage:
    """The usage of a request served without an admission (fail_open): its calls, nothing more."""
    usage = Usage((request.customer, request.period_id, request.period_end, request.day))
    usage.add_row((request.route, request.listed, request.key_id), request.weight, 0)
    return usage


__all__ = [
    "Admission",
    "Carry",
    "Expired",
    "Pending",
    "Reply",
    "RowKey",
    "Runner",
    "Usage",
    "UsageKey",
    "Work",
    "served_usage",
]
