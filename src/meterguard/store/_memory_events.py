"""The memory store's event log: one stream per customer, read as Redis streams are.

Usage events are kept raw (a tuple) and turned into stream fields only when read, and their ids
(``<ms>-<seq>``, ordered as Redis orders stream ids) are formatted then too, their milliseconds
included (an entry keeps the clock's reading): the request path pays an append, not a JSON
encoding. At most MAX_EVENTS per customer are kept (the oldest go first): the memory store is
for one process, not for audits.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Mapping, Sequence

from .base import EVENT_VERSION

MAX_EVENTS = 10_000

#: An event of any type: clock reading (epoch seconds), sequence, its fields.
_FieldsEntry = tuple[float, int, dict[str, str]]
#: A usage event, flat (every call and every response with records appends one, and a tuple
#: holding the event's own tuple would cost an allocation and a collection more each): clock
#: reading, sequence, customer, period, day, calls, records, replays, route, key id.
_UsageEntry = tuple[float, int, str, str, str, int, int, int, str | None, str | None]
_Entry = _FieldsEntry | _UsageEntry


def usage_fields(
    customer: str, period_id: str, day: str, now: float, calls: int, records: int, replays: int,
    route: str | None, key_id: str | None,
) -> dict[str, str]:  # fmt: skip
    """Stream fields of a usage event (store.base EVENT_VERSION), as Redis keeps them."""
    return {
        "v": EVENT_VERSION, "type": "usage", "customer": customer, "period": period_id, "day": day,
        "ts": repr(now), "calls": str(calls), "records": str(records), "replays": str(replays),
        "routes": json.dumps({route: [calls, records]} if route is not None else {}),
        "keys": json.dumps({key_id: [calls, records]} if key_id is not None else {}),
    }  # fmt: skip


def _ms(now: float) -> int:
    """An entry's milliseconds, as in its id."""
    return int(now * 1000)


def _position(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _read(entry: _Entry) -> tuple[str, dict[str, str]]:
    if len(entry) == 3:
        now, seq, fields = entry
        return f"{_ms(now)}-{seq}", fields
    now, seq, customer, period_id, day, calls, records, replays, route, key_id = entry
    return f"{_ms(now)}-{seq}", usage_fields(customer, period_id, day, now, calls, records, replays, route, key_id)


class EventLog:
    def __init__(self) -> None:
        self._events: defaultdict[str, list[_Entry]] = defaultdict(list)
        self._dropped: defaultdict[str, int] = defaultdict(int)  # events dropped from the front
        self._delivered: dict[tuple[str, str], int] = {}  # (customer, group) -> events handed out
        self._pending: defaultdict[tuple[str, str], dict[str, dict[str, str]]] = defaultdict(dict)
        self._seq = 0

    def _add(self, customer: str, now: float, fields: dict[str, str]) -> int:
        self._seq += 1
        events = self._events[customer]
        events.append((now, self._seq, fields))
        if len(events) > MAX_EVENTS:
            self._trim(customer, events)
        return self._seq

    def _trim(self, customer: str, events: list[_Entry]) -> None:
        drop = len(events) // 2
        del events[:drop]
        self._dropped[customer] += drop

    def usage(
        self, customer: str, period_id: str, day: str, now: float, calls: int = 0, records: int = 0,
        replays: int = 0, route: str | None = None, key_id: str | None = None,
    ) -> None:  # fmt: skip
        # _add, written out: this runs for every call and every response with records
        self._seq += 1
        events = self._events[customer]
        events.append((now, self._seq, customer, period_id, day, calls, records, replays, route, key_id))
        if len(events) > MAX_EVENTS:
            self._trim(customer, events)

    def append(self, customer: str, now: float, fields: Mapping[str, str]) -> str:
        """An event of any type; its id."""
        return f"{_ms(now)}-{self._add(customer, now, dict(fields))}"

    def read(self, customer: str, group: str, count: int, pending: bool) -> list[tuple[str, dict[str, str]]]:
        held = self._pending[(customer, group)]
        if pending:
            return list(held.items())[:count]
        dropped = self._dropped[customer]
        start = max(self._delivered.get((customer, group), 0), dropped)
        batch = [_read(entry) for entry in self._events[customer][start - dropped :][:count]]
        self._delivered[(customer, group)] = start + len(batch)
        held.update(batch)
        return batch

    def ack(self, customer: str, group: str, ids: Sequence[str]) -> None:
        held = self._pending[(customer, group)]
        for event_id in ids:
            held.pop(event_id, None)

    def range(self, customer: str, after: str, count: int) -> list[tuple[str, dict[str, str]]]:
        floor = _position(after)
        later = (entry for entry in self._events[customer] if (_ms(entry[0]), entry[1]) > floor)
        return [_read(entry) for entry in itertools.islice(later, count)]
