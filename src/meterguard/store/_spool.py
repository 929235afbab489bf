"""The ledger on disk (``spool.path``): what the store has not acknowledged survives a restart.

While the store answers, nothing is written: usage waits in memory for milliseconds. Once it
has waited longer (the store is away), the ledger's whole state is written to
``<spool.path>/<writer>.json`` (atomically: a temporary file, then a rename), and again before
every batch is sent, so the file always names the batches that may have reached the store.
Once everything is acknowledged the file is removed.

A process that starts adopts one file no live process holds (each writer holds
``<writer>.lock`` with ``flock`` while it runs) and continues as that writer: its batches are
resolved by their ids like any other, so a replay never applies anything twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..plans import Window
from ._ledger_entries import Admission, Carry, Usage
from .base import AdmitRequest, Meter

log = logging.getLogger("meterguard.spool")

VERSION = 1


@dataclass(slots=True)
class Spooled:
    writer: str
    seq: int
    usages: list[Usage]
    carries: dict[str, list[Carry]]


def _window(data: list[Any]) -> Window:
    return Window(data[0], data[1], data[2], data[3])


def _meter(data: list[Any]) -> Meter:
    return Meter(data[0], data[1], data[2], tuple((up_to, price) for up_to, price in data[3]))


def _encode_request(r: AdmitRequest) -> dict[str, Any]:
    return {
        "customer": r.customer, "key_id": r.key_id, "route": r.route, "listed": r.listed, "weight": r.weight,
        "windows": [[w.name, w.limit, w.seconds, w.counter] for w in r.windows], "strategy": r.strategy,
        "period_id": r.period_id, "period_end": r.period_end,
        "calls": [r.calls.included, r.calls.unit, r.calls.price_micros, [list(t) for t in r.calls.tiers]],
        "records": [r.records.included, r.records.unit, r.records.price_micros, [list(t) for t in r.records.tiers]],
        "spend_cap_cents": r.spend_cap_cents, "day": r.day, "lease": r.lease,
        "idempotency_key": r.idempotency_key, "idempotency_fingerprint": r.idempotency_fingerprint,
        "served_on_loss": r.served_on_loss,
    }  # fmt: skip


def _decode_request(d: dict[str, Any]) -> AdmitRequest:
    return AdmitRequest(
        customer=d["customer"], key_id=d["key_id"], route=d["route"], listed=d["listed"], weight=d["weight"],
        windows=tuple(_window(w) for w in d["windows"]), strategy=d["strategy"], period_id=d["period_id"],
        period_end=d["period_end"], calls=_meter(d["calls"]), records=_meter(d["records"]),
        spend_cap_cents=d["spend_cap_cents"], day=d["day"], lease=d["lease"],
        idempotency_key=d["idempotency_key"], idempotency_fingerprint=d["idempotency_fingerprint"],
        served_on_loss=d["served_on_loss"],
    )  # fmt: skip


def _encode_admission(a: Admission) -> dict[str, Any]:
    return {"request": _encode_request(a.request), "served": a.served}


def _encode_usage(u: Usage) -> dict[str, Any]:
    return {
        "key": list(u.key),
        "rows": [
            [route, listed, key_id, calls, records] for (route, listed, key_id), (calls, records) in u.rows.items()
        ],
        "consumed": u.consumed,
        "returned": u.returned,
        "windows": [[[w.name, w.limit, w.seconds, w.counter], slot, units] for (w, slot), units in u.windows.items()],
        "unmetered": u.unmetered,
        "uncounted": u.uncounted,
    }


def _decode_usage(d: dict[str, Any]) -> Usage:
    customer, period_id, period_end, day = d["key"]
    usage = Usage((customer, period_id, period_end, day), consumed=d["consumed"], returned=d["returned"])
    for route, listed, key_id, calls, records in d["rows"]:
        usage.add_row((route, listed, key_id), calls, records)
    for window, slot, units in d["windows"]:
        usage.windows[(_window(window), slot)] = units
    usage.unmetered = d["unmetered"]
    usage.uncounted = d.get("uncounted", 0)  # absent from spools written before it existed
    return usage


def encode(spooled: Spooled) -> str:
    return json.dumps(
        {
            "version": VERSION,
            "writer": spooled.writer,
            "seq": spooled.seq,
            "usages": [_encode_usage(u) for u in spooled.usages],
            "carries": {
                customer: [
                    {
                        "seq": c.seq,
                        "admissions": [
                            {"request": _encode_request(a.request), "served": a.served} for a in c.admissions
                        ],
                        "usages": [_encode_usage(u) for u in c.usages],
                    }
                    for c in carries
                ]
                for customer, carries in spooled.carries.items()
            },
        },
        separators=(",", ":"),
    )


def decode(text: str) -> Spooled:
    data = json.loads(text)
    if data.get("version") != VERSION:
        raise ValueError(f"unknown spool version {data.get('version')!r}")
    return Spooled(
        writer=data["writer"],
        seq=data["seq"],
        usages=[_decode_usage(u) for u in data["usages"]],
        carries={
            customer: [
                Carry(
                    c["seq"],
                    [Admission(_decode_request(a["request"]), a["served"]) for a in c["admissions"]],
                    [_decode_usage(u) for u in c["usages"]],
                )
                for c in carries
            ]
            for customer, carries in data["carries"].items()
        },
    )


class Spool:
    """The files of one writer under ``directory``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock: IO[bytes] | None = None
        self.writer: str | None = None
        self.active = False  # a file is on disk: write before every send

    def _path(self, writer: str) -> Path:
        return self.directory / f"{writer}.json"

    def _try_lock(self, writer: str) -> IO[bytes] | None:
        handle = open(self.directory / f"{writer}.lock", "ab")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return handle

    def adopt(self) -> Spooled | None:
        """The state of a writer no live process holds, now held by this one; None if there is none."""
        for path in sorted(self.directory.glob("*.json")):
            writer = path.stem
            handle = self._try_lock(writer)
            if handle is None:
                continue
            try:
                spooled = decode(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("spool file %s cannot be read (%s); left in place", path, exc)
                handle.close()
                continue
            self._lock, self.writer, self.active = handle, writer, True
            log.warning(
                "adopted spool of writer %s: %d usage entries, %d carried batches to replay",
                writer, len(spooled.usages), sum(len(c) for c in spooled.carries.values()),
            )  # fmt: skip
            return spooled
        return None

    def hold(self, writer: str) -> None:
        """Take the lock of a new writer (no file yet)."""
        if self._lock is None:
            self._lock = self._try_lock(writer)
            self.writer = writer

    def write(self, spooled: Spooled) -> None:
        assert self.writer is not None
        path = self._path(self.writer)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(encode(spooled), encoding="utf-8")
        os.replace(tmp, path)
        self.active = True

    def clear(self) -> None:
        if self.writer is not None and self.active:
            with contextlib.suppress(FileNotFoundError):
                self._path(self.writer).unlink()
        self.active = False

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
            if self.writer is not None and not self.active:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{self.writer}.lock").unlink()
