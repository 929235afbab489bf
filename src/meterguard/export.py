"""``meterguard export``: every customer's audit events, exactly once, as JSON lines, CSV or Stripe meter events.

Events are read from each customer's stream through a consumer group, so a run picks up where
the last one stopped. Exactly once across crashes comes from three steps in this order:

1. events a previous run read but never acknowledged (it died between writing and acking) are
   read first, then new ones;
2. each batch is written and fsynced before it is acknowledged;
3. an event whose id the output file already holds is not written again.

So an exporter killed at any point and rerun with the same ``--output`` yields every event once.
A line torn by the kill (no final newline) is cut off at the restart: its event was not
acknowledged, so it is read again. Event ids are ``<customer>/<stream id>``, unique across
customers. Without ``--output`` (stdout), steps 1 and 2 still hold but nothing can deduplicate.
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
from typing import IO, Literal

from .store.base import Store

Format = Literal["jsonl", "csv", "stripe"]
FORMATS: tuple[Format, ...] = ("jsonl", "csv", "stripe")
GROUP = "export"
CONSUMER = "meterguard-export"  # one stable name: a rerun must see the pending entries of the run it replaces
BATCH = 500
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


def render(fmt: Format, event_id: str, customer: str, fields: dict[str, str]) -> list[str]:
    """The output lines of one event (no newline); a Stripe export writes usage events only."""
    if fmt == "jsonl":
        return [json.dumps({"event_id": event_id, "customer": customer, **fields}, separators=(",", ":"))]
    if fmt == "csv":
        out = io.StringIO()
        extra = {name: value for name, value in fields.items() if name not in _CSV_NAMED}
        row = [event_id, fields.get("customer", customer)]
        row += [fields.get(name, "") for name in CSV_COLUMNS[2:-1]]
        row.append(json.dumps(extra, separators=(",", ":"), sort_keys=True) if extra else "")
        csv.writer(out, lineterminator="").writerow(row)
        return [out.getvalue()]
    if fields.get("type") != "usage":
        return []
    lines = []
    for meter, name in STRIPE_EVENTS.items():
        try:
            value = int(fields.get(meter, "0"))
        except ValueError:
            value = 0
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


@dataclass(slots=True)
class ExportResult:
    written: int = 0  # events written
    duplicates: int = 0  # events the output already held
    before_since: int = 0  # events older than --since (acknowledged, not written)
    customers: int = 0


async def export_events(
    store: Store,
    customers: Sequence[str],
    sink: Sink,
    *,
    since: float | None = None,
    group: str = GROUP,
    consumer: str = CONSUMER,
    batch: int = BATCH,
    progress: Callable[[str, int], None] | None = None,
) -> ExportResult:
    """Export every customer's unacknowledged events to ``sink``; see the module docstring.

    Events older than ``since`` are acknowledged without being written: the group moves past
    them, so a later export without ``--since`` does not see them either.
    """
    result = ExportResult(customers=len(customers))
    for customer in customers:
        for pending in (True, False):
            while True:
                events = await store.read_events(customer, group, consumer, batch, pending=pending)
                if not events:
                    break
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
                ids = [stream_id for stream_id, _ in events]
                _before_ack(customer, ids)
                await store.ack_events(customer, group, ids)
                if progress is not None:
                    progress(customer, len(events))
    return result


def open_sink(output: str | None, fmt: Format) -> Sink:
    return FileSink(output, fmt) if output else Sink(sys.stdout, fmt)


__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "ExportResult",
    "FileSink",
    "Sink",
    "export_events",
    "open_sink",
    "parse_since",
    "render",
]
