"""``meterguard export``: audit events, exactly once per sink, as JSON lines, CSV or Stripe meter events.

Events are read from each customer's stream through a consumer group, so a run picks up where
the last one of the same group stopped. Each sink has a group of its own (:func:`default_group`:
one per output file, one per format on stdout), so that every sink gets every event: a second
file or another format starts from the oldest event the store still keeps. Exactly once across
crashes comes from three steps in this order:

1. events a previous run read but never acknowledged (it died between writing and acking) are
   read first, then new ones;
2. each batch is written and fsynced before it is acknowledged;
3. an event whose id the output file already holds is not written again.

So an exporter killed at any point and rerun with the same ``--output`` yields every event once.
A line torn by the kill (no final newline) is cut off at the restart: its event was not
acknowledged, so it is read again. Event ids are ``<customer>/<stream id>``, unique across
customers. Without ``--output`` (stdout), steps 1 and 2 still hold but nothing can deduplicate.

A replay (:func:`replay_events`) reads the events kept since a moment past every group: it
acknowledges nothing and moves no group, and a file still never gets an event twice.

Events come in two versions (``v``): 1 (plan changes, and usage from the memory store and older
gateways: one admission or settlement each) and 2 (usage folded by the Redis ledger per
customer and batch). Both have the same fields, and both are written the same way: counts as
JSON numbers, ``routes``/``keys`` as JSON objects, ``ts`` as RFC 3339 with microseconds. A count
may be negative: a correction, e.g. an admission undone after a fault (docs/cli.md).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import IO, Any, Literal

from .store.base import Store

Format = Literal["jsonl", "csv", "stripe"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "stripe")
GROUP = "export"  # jsonl on stdout: the group every export used before sinks had groups of their own
CONSUMER = "meterguard-export"  # one stable name: a rerun must see the pending entries of the run it replaces
BATCH = 500
# A replay starts reading this long before the moment asked for: a stream id is the store's clock
# when the event was added, ``ts`` may come from a gateway's clock (plan events). ``ts`` decides.
REPLAY_MARGIN_MS = 3_600_000
CSV_COLUMNS = (
    "event_id",
    "customer",
    "type",
    "ts",
    "period",
    "day",
    "calls",
    "records",
    "replays",
    "plan",
    "previous",
    "fields",
)
_CSV_NAMED = frozenset(CSV_COLUMNS) - {"event_id", "fields"}
STRIPE_EVENTS = {"calls": "meterguard_calls", "records": "meterguard_records"}
INTEGER_FIELDS = frozenset({"v", "calls", "records", "replays", "unmetered"})
JSON_FIELDS = frozenset({"routes", "keys"})


def default_group(output: str | None, fmt: Format) -> str:
    """The consumer group of a sink: one per output file (by absolute path), one per format on stdout."""
    if output:
        return f"export:file:{os.path.abspath(output)}"
    return GROUP if fmt == "jsonl" else f"export:{fmt}"


def parse_since(text: str) -> float:
    """``YYYY-MM-DD`` (midnight UTC) or RFC 3339, as epoch seconds; raises ValueError."""
    text = text.strip()
    try:
        if len(text) == 10:
            moment = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
            if moment.tzinfo is None:
                raise ValueError("give a time zone, e.g. 2026-11-01T00:00:00Z")
    except ValueError as exc:
        raise ValueError(f"{text!r} is neither YYYY-MM-DD nor RFC 3339 ({exc})") from None
    return moment.timestamp()


def _ts(fields: dict[str, str]) -> float:
    try:
        return float(fields.get("ts", "0"))
    except ValueError:
        return 0.0


def rfc3339_ts(text: str) -> str | None:
    """An event's ``ts`` (epoch seconds as the store wrote it: ``"<sec>.<usec>"``, or a float's
    repr) as RFC 3339 in UTC with microseconds, read as a decimal so that no digit is rounded
    through a float; None when it is not a time."""
    try:
        seconds = Decimal(text.strip())
        if not seconds.is_finite():
            return None
        micros = int((seconds * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))
        whole, fraction = divmod(micros, 1_000_000)
        moment = datetime.fromtimestamp(whole, UTC)
    except (InvalidOperation, ValueError, OverflowError, OSError):
        return None
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{fraction:06d}Z"


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def typed(event_id: str, customer: str, fields: dict[str, str]) -> dict[str, Any]:
    """One event as a JSON object: its id and customer first, counts as numbers, ``routes`` and
    ``keys`` as objects, ``ts`` in RFC 3339. A value that does not read as its type (never
    written so by meterguard) is kept as the string it is, rather than dropped."""
    document: dict[str, Any] = {"event_id": event_id, "customer": fields.get("customer", customer)}
    for name in ("type", "ts", "v"):
        if name in fields:
            document[name] = None  # the order of the first keys, whatever the stream's
    for name, value in fields.items():
        if name == "customer":
            continue
        typed_value: Any = value
        if name == "ts":
            typed_value = rfc3339_ts(value) or value
        elif name in INTEGER_FIELDS:
            number = _integer(value)
            typed_value = value if number is None else number
        elif name in JSON_FIELDS:
            try:
                typed_value = json.loads(value)
            except ValueError:
                typed_value = value
        document[name] = typed_value
    return document


def render(fmt: Format, event_id: str, customer: str, fields: dict[str, str]) -> list[str]:
    """The output lines of one event (no newline); a Stripe export writes usage events only."""
    if fmt == "jsonl":
        return [json.dumps(typed(event_id, customer, fields), separators=(",", ":"), ensure_ascii=False)]
    if fmt == "csv":
        document = typed(event_id, customer, fields)
        out = io.StringIO()
        extra = {name: value for name, value in document.items() if name not in _CSV_NAMED and name != "event_id"}
        row: list[Any] = [event_id, document["customer"]]
        row += [document.get(name, "") for name in CSV_COLUMNS[2:-1]]
        row.append(json.dumps(extra, separators=(",", ":"), sort_keys=True, ensure_ascii=False) if extra else "")
        csv.writer(out, lineterminator="").writerow(row)
        return [out.getvalue()]
    if fields.get("type") != "usage":
        return []
    lines = []
    for meter, name in STRIPE_EVENTS.items():
        value = _integer(fields.get(meter, "0")) or 0
        # A negative count is a correction: sent as a negative value under its own identifier,
        # which a meter aggregating by sum subtracts (docs/cli.md, "Stripe").
        if value:
            line = {
                "event_name": name,
                "timestamp": int(_ts(fields)),
                "identifier": f"{event_id}:{meter}",
                "payload": {"stripe_customer_id": customer, "value": str(value)},
            }
            lines.append(json.dumps(line, separators=(",", ":")))
    return lines


def _line_event_id(fmt: Format, line: str) -> str | None:
    """The event id an output line belongs to, or None for a header or an unreadable line."""
    try:
        if fmt == "csv":
            row = next(csv.reader([line]))
            return row[0] if row and row[0] != "event_id" else None
        data = json.loads(line)
        if fmt == "stripe":
            return str(data["identifier"]).rsplit(":", 1)[0]
        return str(data["event_id"])
    except (ValueError, KeyError, TypeError, StopIteration):
        return None


class Sink:
    """Where lines go: stdout (nothing to deduplicate against) or a file (see :class:`FileSink`)."""

    def __init__(self, stream: IO[str], fmt: Format) -> None:
        self.stream = stream
        self.fmt = fmt
        self.seen: set[str] = set()
        self._header = fmt == "csv"

    def write(self, lines: Iterable[str]) -> None:
        lines = list(lines)
        if not lines:
            return
        if self._header:
            self.stream.write(",".join(CSV_COLUMNS) + "\n")
            self._header = False
        self.stream.write("".join(line + "\n" for line in lines))

    def sync(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        self.sync()


class FileSink(Sink):
    """An output file appended to, and read first for the event ids it already holds."""

    def __init__(self, path: str, fmt: Format) -> None:
        existed = os.path.exists(path)
        stream = open(path, "a+", encoding="utf-8", newline="")  # noqa: SIM115 - closed by close()
        super().__init__(stream, fmt)
        stream.seek(0)
        text = stream.read()
        if text and not text.endswith("\n"):
            # Torn by a kill mid-write: the event was not acknowledged, so it will be read again.
            keep = text.rfind("\n") + 1
            stream.truncate(len(text[:keep].encode("utf-8")))
            text = text[:keep]
        stream.seek(0, os.SEEK_END)
        for line in text.splitlines():
            event_id = _line_event_id(fmt, line)
            if event_id is not None:
                self.seen.add(event_id)
        self._header = fmt == "csv" and not text
        if not existed:
            _fsync_dir(os.path.dirname(os.path.abspath(path)))

    def sync(self) -> None:
        self.stream.flush()
        os.fsync(self.stream.fileno())

    def close(self) -> None:
        self.sync()
        self.stream.close()


def _fsync_dir(directory: str) -> None:
    # A new file's directory entry must be durable too, or a crash can lose the whole file.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _before_ack(customer: str, ids: Sequence[str]) -> None:
    """A seam for tests: raising here is a kill between writing (fsynced) and acknowledging."""


#: ``progress(customers_done, events_read)``: after every batch and after every customer.
Progress = Callable[[int, int], None]


@dataclass(slots=True)
class ExportResult:
    written: int = 0  # events written
    duplicates: int = 0  # events the output already held
    before_since: int = 0  # events older than --since / --replay (acknowledged or passed over, not written)
    customers: int = 0
    group: str | None = None  # the consumer group read through; None for a replay
    oldest: str | None = None  # a replay: RFC 3339 ``ts`` of the oldest event it found (how far back it reached)

    def as_json(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "duplicates": self.duplicates,
            "before_since": self.before_since,
            "customers": self.customers,
            "group": self.group,
            "oldest": self.oldest,
        }


def _take(
    result: ExportResult, sink: Sink, customer: str, events: Sequence[tuple[str, dict[str, str]]], since: float | None
) -> None:
    """Write the events of one batch that the sink does not hold and that are not before ``since``."""
    lines: list[str] = []
    for stream_id, fields in events:
        event_id = f"{customer}/{stream_id}"
        if event_id in sink.seen:
            result.duplicates += 1
        elif since is not None and _ts(fields) < since:
            result.before_since += 1
        else:
            lines += render(sink.fmt, event_id, customer, fields)
            sink.seen.add(event_id)
            result.written += 1
    sink.write(lines)
    sink.sync()


async def export_events(
    store: Store,
    customers: Sequence[str],
    sink: Sink,
    *,
    since: float | None = None,
    group: str = GROUP,
    consumer: str = CONSUMER,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> ExportResult:
    """Export every customer's events not yet acknowledged in ``group`` to ``sink``; see the module docstring.

    Events older than ``since`` are acknowledged without being written: the group moves past
    them, so a later export through the same group does not see them either.
    """
    result = ExportResult(customers=len(customers), group=group)
    read = 0
    for done, customer in enumerate(customers):
        for pending in (True, False):
            while True:
                events = await store.read_events(customer, group, consumer, batch, pending=pending)
                if not events:
                    break
                _take(result, sink, customer, events, since)
                ids = [stream_id for stream_id, _ in events]
                _before_ack(customer, ids)
                await store.ack_events(customer, group, ids)
                read += len(events)
                if progress is not None:
                    progress(done, read)
        if progress is not None:
            progress(done + 1, read)
    return result


async def replay_events(
    store: Store,
    customers: Sequence[str],
    sink: Sink,
    *,
    since: float,
    batch: int = BATCH,
    progress: Progress | None = None,
) -> ExportResult:
    """Write every event the store still keeps from ``since`` on, past every consumer group.

    Nothing is acknowledged and no group moves: the exports that follow are what they would
    have been. How far back a replay reaches is how long the store keeps events (an event every
    group has exported is kept ``events.keep_exported_seconds``); ``oldest`` tells.
    """
    result = ExportResult(customers=len(customers))
    oldest: tuple[float, str] | None = None  # (ts, as written)
    start = f"{max(0, int(since * 1000) - REPLAY_MARGIN_MS)}-0"
    read = 0
    for done, customer in enumerate(customers):
        after = start
        while True:
            events = await store.range_events(customer, after, batch)
            if not events:
                break
            for _, fields in events:
                moment = _ts(fields)
                if moment >= since and (oldest is None or moment < oldest[0]):
                    oldest = (moment, fields.get("ts", ""))
            _take(result, sink, customer, events, since)
            after = events[-1][0]
            read += len(events)
            if progress is not None:
                progress(done, read)
        if progress is not None:
            progress(done + 1, read)
    if oldest is not None:
        result.oldest = rfc3339_ts(oldest[1])
    return result


def open_sink(output: str | None, fmt: Format) -> Sink:
    return FileSink(output, fmt) if output else Sink(sys.stdout, fmt)


__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "ExportResult",
    "FileSink",
    "Sink",
    "default_group",
    "export_events",
    "open_sink",
    "parse_since",
    "render",
    "replay_events",
    "rfc3339_ts",
    "typed",
]
