"""Metering on Redis: admissions and usage as ledger batches (store/_ledger.py, store/lua/meter.lua).

This module turns a batch of per-customer work into one METER call (KEYS and one JSON
argument) and its replies back into decisions, and reads the counters back for usage
documents. A mixin of RedisStore.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import quote

import msgspec

from ..config import LedgerSettings
from ..plans import Window
from ..windows import wait
from ._ledger import Ledger
from ._ledger_entries import Admission, Carry, Reply, Usage, Work
from ._redis_client import RedisBase, load_script, translated
from ._spool import Spool
from .base import (
    MAX_UNLISTED_ROUTES,
    OTHER_ROUTE,
    AdmitRequest,
    Alerting,
    AlertSink,
    Counts,
    DayUsage,
    Decision,
    Fired,
    Flush,
    Meter,
    Reason,
    Settlement,
    WindowState,
)
from .base import Usage as UsageCounts

DAY = 86_400
PERIOD_AUDIT_SECONDS = 400 * DAY  # period counters outlive the period end this long, for audits
STATE_TTL_SECONDS = 400 * DAY  # a customer's state hash and event stream, from their last daily refresh
IDEMPOTENCY_LOCK_SECONDS = 300  # an Idempotency-Key whose first request never finished frees after this
DEFAULT_EVENTS_MAX_LEN = 1_000_000  # usage events kept per customer, exported or not (approximate)
SEP = "\x1f"  # between the parts of an audit cell's field name; control characters never reach labels

METER = load_script("meter")

CODE_ADMITTED, CODE_RATE, CODE_QUOTA, CODE_CAP, CODE_IN_FLIGHT, CODE_MISMATCH, CODE_EXPIRED = 0, 1, 2, 3, 4, 5, 8
FLAG_REPLAY, FLAG_CALLS, FLAG_RECORDS, FLAG_WINDOW = 1, 4, 8, 16
_REASONS: dict[int, Reason] = {CODE_RATE: "rate_limited", CODE_QUOTA: "quota", CODE_CAP: "spend_cap"}
_IDEMPOTENCY: dict[int, Literal["in_flight", "mismatch"]] = {CODE_IN_FLIGHT: "in_flight", CODE_MISMATCH: "mismatch"}


def _meter(meter: Meter) -> list[Any]:
    return [
        -1 if meter.included is None else meter.included,
        meter.unit,
        [[-1 if up_to is None else up_to, price] for up_to, price in meter.tiers],
    ]


def _field(window: Window) -> str:
    """The window's name in the customer's state hash (its slots are ``<name>@<slot index>``)."""
    return "w:" + quote(window.counter, safe="")


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class _Batch:
    """KEYS and the JSON argument of one METER call, built up work by work."""

    def __init__(self, store: RedisMeter) -> None:
        self.store = store
        self.keys: list[str] = []
        self.key_index: dict[str, int] = {}
        self.terms: list[Any] = []
        self.terms_index: dict[tuple[int, str, int, int], int] = {}

    def key(self, name: str) -> int:
        index = self.key_index.get(name)
        if index is None:
            self.keys.append(name)
            index = self.key_index[name] = len(self.keys)
        return index

    def term(self, request: AdmitRequest) -> int:
        return self._term(request.windows, request.strategy, request.calls, request.records)

    def _term(self, windows: tuple[Window, ...], strategy: str, calls: Meter, records: Meter) -> int:
        # By identity: the requests of one plan and route share these objects, and hashing the
        # frozen dataclasses (Python-level __hash__) cost more than the rest of the encoding.
        # Equal terms in distinct objects only repeat an entry. The batch keeps them alive.
        ident = (id(windows), strategy, id(calls), id(records))
        index = self.terms_index.get(ident)
        if index is None:
            self.terms.append(
                [
                    1 if strategy == "sliding" else 0,
                    [[_field(w), w.limit, w.seconds] for w in windows],
                    _meter(calls),
                    _meter(records),
                ]
            )
            index = self.terms_index[ident] = len(self.terms)
        return index

    def admission(self, admission: Admission) -> list[Any]:
        request = admission.request
        tag = self.store._tag(request.customer)
        idem = 0
        if request.idempotency_key is not None:
            idem = self.key(f"{tag}:i:{idempotency_digest(request.idempotency_key)}")
        fields = [
            self.term(request),
            self.key(f"{tag}:p:{request.period_id}"),
            request.period_id,
            request.day,
            request.weight,
            request.route,
            1 if request.listed else 0,
            request.key_id,
            request.period_end,
            -1 if request.spend_cap_cents is None else request.spend_cap_cents,
            request.lease,
            idem,
            request.idempotency_fingerprint,
            1 if admission.served else 0,
            *_alerts(request.alerting),
        ]
        return _trimmed(fields, _ADMISSION_DEFAULTS)

    def usage(self, usage: Usage) -> list[Any]:
        customer, period_id, period_end, day = usage.key
        fields = [
            self.key(f"{self.store._tag(customer)}:p:{period_id}"),
            period_id,
            day,
            period_end,
            [[route, 1 if listed else 0, key_id, c, r] for (route, listed, key_id), (c, r) in usage.rows.items()],
            usage.consumed,
            usage.returned,
            [[_field(w), w.seconds, slot, units] for (w, slot), units in usage.windows.items() if units > 0],
            usage.unmetered,
            usage.uncounted,
            *self._usage_alerts(usage),
        ]
        return _trimmed(fields, _USAGE_DEFAULTS)

    def _usage_alerts(self, usage: Usage) -> list[Any]:
        """The thresholds to check, {terms, cap} to price spend (or 0), and alerts acknowledged."""
        alerting = usage.alerting
        thresholds: Any = 0
        priced: Any = 0
        if alerting is not None:
            thresholds = _alerts(alerting)[0]
            if alerting.spend:
                cap = -1 if alerting.spend_cap_cents is None else alerting.spend_cap_cents
                priced = [self._term((), "sliding", alerting.calls, alerting.records), cap]
        return [thresholds, priced, usage.acks or 0]

    def carry(self, carry: Carry) -> list[Any]:
        return [carry.seq, [self.admission(a) for a in carry.admissions], [self.usage(u) for u in carry.usages]]

    def work(self, work: Work) -> list[Any]:
        tag = self.store._tag(work.customer)
        fields = [
            work.customer,
            self.key(f"{tag}:s"),
            self.key(f"{tag}:events"),
            [self.admission(a) for a in work.admissions],
            [self.usage(u) for u in work.usages],
            [self.carry(c) for c in work.carries],
        ]
        return _trimmed(fields, _GROUP_DEFAULTS)


# The defaults of each field of an admission, a usage entry and a group (None: always sent).
# Trailing fields at their default are left out, meter.lua reads them back as the default:
# Redis spends about a microsecond decoding each JSON value, and most of these are defaults.
_ADMISSION_DEFAULTS: tuple[Any, ...] = (None,) * 9 + (-1, 0, 0, "", 0, 0, 0)
_USAGE_DEFAULTS: tuple[Any, ...] = (None,) * 5 + (0, 0, [], 0, 0, 0, 0, 0)
_GROUP_DEFAULTS: tuple[Any, ...] = (None, None, None, [], [], [])


def _trimmed(fields: list[Any], defaults: tuple[Any, ...]) -> list[Any]:
    end = len(fields)
    while end and defaults[end - 1] is not None and fields[end - 1] == defaults[end - 1]:
        end -= 1
    del fields[end:]
    return fields


_encode = msgspec.json.Encoder().encode


def _json(document: Any) -> bytes | str:
    """The batch as JSON: msgspec's C encoder (0.15 us per admission against json's 1.3).
    A string no UTF-8 can carry (a lone surrogate) goes as json's escape instead, as before."""
    try:
        return _encode(document)
    except UnicodeEncodeError:
        return json.dumps(document, separators=(",", ":"))


def _alerts(alerting: Alerting | None) -> list[Any]:
    """An admission's last two fields: the thresholds ({meter, level, name}, by meter then level)
    and whether they price spend."""
    if alerting is None or not alerting.thresholds:
        return [0, 0]
    return [[[t.meter, t.units, t.name] for t in alerting.thresholds], 1 if alerting.spend else 0]


def _recorded(entry: list[Any]) -> list[Any]:
    """A recorded decision ``[code, granted, flags]`` in the shape of a reply: the counts of that
    moment are not kept (a repeat is rare: a retry after a lost reply), so the windows read as
    full and the totals as zero; the decision itself is exact."""
    code, granted, flags = (int(x) for x in entry)
    return [code, 0, 0, 0, granted, flags] if code != CODE_EXPIRED else [code]


def decision(request: AdmitRequest, reply: list[Any], now: float) -> Decision:
    """A Decision from an admission's reply: the script returns counts, the rest is windows.py.

    Once per admission, so the window arithmetic of windows.estimate/remaining/reset_after is
    written out here (the same expressions, so the same floats) and computed once per window.
    """
    code, calls_used, records_used, spend, granted, flags = reply[:6]
    sliding = request.strategy == "sliding"
    admitted = code == CODE_ADMITTED
    weight = request.weight
    states: list[WindowState] = []
    slots: list[int] = []
    violated: list[str] = []
    retry_after = 0.0
    known = len(reply) >= 6 + 2 * len(request.windows)
    for i, window in enumerate(request.windows):
        seconds, limit = window.seconds, window.limit
        previous, current = (reply[6 + 2 * i], reply[7 + 2 * i]) if known else (0, limit)
        index = int(now // seconds)
        elapsed = now - index * seconds
        if flags & (FLAG_WINDOW << i):
            violated.append(window.name)
            before = current - weight - granted if admitted else current
            retry_after = max(retry_after, wait(previous, before, elapsed, seconds, limit, weight, sliding))
        used = previous * (seconds - elapsed) / seconds + current if sliding else current
        if used + weight > limit:  # windows.reset_after
            reset = wait(previous, current, elapsed, seconds, limit, weight, sliding)
        else:
            reset = seconds - elapsed
        states.append(WindowState(window, max(0, math.floor(limit - used + 1e-9)), reset))
        slots.append(index)
    if code == CODE_QUOTA:
        if flags & FLAG_CALLS:
            violated.append("calls-period")
        if flags & FLAG_RECORDS:
            violated.append("records-period")
    if code in (CODE_QUOTA, CODE_CAP):
        retry_after = request.period_end - now
    return Decision(
        admitted=admitted,
        reason=_REASONS.get(code),
        violated=tuple(violated),
        retry_after=retry_after,
        windows=tuple(states),
        calls_used=calls_used,
        records_used=records_used,
        spend_cents=spend,
        now=now,
        granted=granted,
        replay=bool(flags & FLAG_REPLAY),
        slots=tuple(slots),
        idempotency=_IDEMPOTENCY.get(code),
    )


Table = dict[str, list[int]]  # name -> [calls, records]


def _counts(table: Table) -> dict[str, Counts]:
    # a cell back at zero (an admission undone) is as if it never was
    return {name: Counts(calls, records) for name, (calls, records) in table.items() if calls or records}


def _add(table: Table, name: str, calls: int, records: int) -> None:
    cell = table.setdefault(name, [0, 0])
    cell[0] += calls
    cell[1] += records


def _cells(fields: dict[str, str], days: set[str] | None = None) -> dict[str, tuple[Table, Table]]:
    """Audit cells -> ``{day: (by route, by key)}``; only ``days`` when given."""
    out: dict[str, tuple[Table, Table]] = {}
    for name, value in fields.items():
        kind = name[:1]
        if kind not in ("c", "r") or name[1:2] != SEP:
            continue
        _, day, route, key_id = name.split(SEP, 3)
        if days is not None and day not in days:
            continue
        amount = int(value)
        calls, records = (amount, 0) if kind == "c" else (0, amount)
        routes, keys = out.setdefault(day, ({}, {}))
        _add(routes, route, calls, records)
        _add(keys, key_id, calls, records)
    return out


def _merged(tables: list[Table]) -> Table:
    total: Table = {}
    for table in tables:
        for name, (calls, records) in table.items():
            _add(total, name, calls, records)
    return total


class RedisMeter(RedisBase):
    def __init__(self, url: str, *, key_prefix: str = "mg") -> None:
        super().__init__(url, key_prefix=key_prefix)
        self.events_max_len = DEFAULT_EVENTS_MAX_LEN
        self._settings = [
            PERIOD_AUDIT_SECONDS,
            MAX_UNLISTED_ROUTES,
            OTHER_ROUTE,
            IDEMPOTENCY_LOCK_SECONDS,
            self.events_max_len,
            STATE_TTL_SECONDS,
        ]
        self.ledger = Ledger(self._run_batch, self._group_of, admit_seconds=self._timeout())
        self._alert_sink: AlertSink | None = None

    def configure_ledger(self, settings: LedgerSettings) -> None:
        """Bounds and the disk spool; adopts a spool an ended process left (store/_spool.py)."""
        self.events_max_len = settings.events_max_len
        self.events_keep_exported = settings.events_keep_exported_seconds
        self.ledger.max_entries = settings.spool_max_events
        if settings.spool_path is None or self.ledger.spool is not None:
            return
        spool = Spool(settings.spool_path)
        adopted = spool.adopt()
        if adopted is None:
            spool.hold(self.ledger.writer)
            self.ledger.spool = spool
            return
        self.ledger = Ledger(
            self._run_batch,
            self._group_of,
            admit_seconds=self._timeout(),
            max_entries=settings.spool_max_events,
            writer=adopted.writer,
            first_seq=adopted.seq + 1,
            spool=spool,
        )
        self.ledger.restore(adopted.usages, adopted.carries)

    async def start(self) -> None:
        self.ledger.resume()

    def _group_of(self, customer: str) -> int:
        """Customers whose work may share one script call: all of them on a single server."""
        return 0

    async def _run_batch(self, seq: int, deadline_ms: int, works: Sequence[Work]) -> tuple[int, int, list[Reply]]:
        self.metrics.spool_depth.set(self.ledger.depth())
        batch = _Batch(self)
        groups = [batch.work(work) for work in works]
        self._settings[4] = self.events_max_len
        payload = _json(
            {"s": self._settings, "w": self.ledger.writer, "q": seq, "d": deadline_ms, "t": batch.terms, "g": groups}
        )
        started = time.perf_counter()
        sec, usec, *replies = await self._script(METER, batch.keys, [payload])
        self.metrics.store_call("batch", time.perf_counter() - started, len(works))
        out = []
        fired: list[Fired] = []
        for work, reply in zip(works, replies, strict=True):
            status = str(reply[0])
            if status == "stale":
                out.append(Reply(status, [], int(sec), int(usec)))
                continue
            if status == "dup":  # a repeat: the decisions recorded when it ran, and when that was
                out.append(Reply(status, [_recorded(entry) for entry in reply[3]], int(reply[1]), int(reply[2])))
                continue
            out.append(Reply(status, list(reply[1]), int(sec), int(usec)))
            if len(reply) > 2:  # alerts fired and not yet acknowledged: {period id, "name=level,...", ...}
                pending = reply[2]
                for period_id, entries in zip(pending[::2], pending[1::2], strict=True):
                    for entry in str(entries).split(","):
                        name, _, level = entry.rpartition("=")
                        fired.append(Fired(work.customer, str(period_id), name, int(level)))
        if fired and self._alert_sink is not None:
            self._alert_sink(fired)
        return int(sec), int(usec), out

    # the Store protocol ---------------------------------------------------------------------------

    def set_alert_sink(self, sink: AlertSink | None) -> None:
        self._alert_sink = sink

    async def ack_alerts(self, customer: str, period_id: str, names: Sequence[str]) -> None:
        """Delivered: the store stops reporting these alerts (a ledger write, so exactly once)."""
        usage = Usage((customer, period_id, 0, ""), acks=list(names))
        await self._applied(self.ledger.record(usage))

    async def admit(self, request: AdmitRequest) -> Decision:
        reply, now = await self.ledger.admit(request, served=request.served_on_loss)
        return decision(request, reply, now)

    async def settle(self, settlement: Settlement) -> None:
        if settlement.empty:
            return
        usage = Usage((settlement.customer, settlement.period_id, settlement.period_end, settlement.day))
        records = max(0, settlement.records)
        if records or settlement.calls:
            usage.add_row((settlement.route, settlement.listed, settlement.key_id), settlement.calls, records)
        usage.uncounted = max(0, settlement.uncounted)
        usage.alerting = settlement.alerting
        await self._applied(self.ledger.record(usage))

    async def flush(self, flush: Flush) -> None:
        usage = Usage((flush.customer, flush.period_id, flush.period_end, flush.day))
        for row in flush.rows:
            usage.add_row((row.route, row.listed, row.key_id), row.calls, row.records)
        usage.consumed, usage.returned = flush.consumed, flush.returned
        for window, slot, units in flush.windows:
            usage.windows[(window, slot)] = usage.windows.get((window, slot), 0) + units
        usage.alerting = flush.alerting
        await self._applied(self.ledger.record(usage))

    async def _applied(self, waiter: Any) -> None:
        """Wait for the store to apply usage, but no longer than an admission would wait: the
        ledger keeps it until it is applied, whatever happens to the caller."""
        await asyncio.wait({waiter}, timeout=self._timeout())

    async def usage(self, customer: str, period_id: str) -> UsageCounts:
        with translated():
            fields: dict[str, str] = await self._client().hgetall(f"{self._tag(customer)}:p:{period_id}")
        if not fields:
            return UsageCounts()
        days = _cells(fields)
        rejected = {field[2:]: int(value) for field, value in fields.items() if field.startswith("x:")}
        return UsageCounts(
            calls=int(fields.get("calls", 0)),
            records=int(fields.get("records", 0)),
            rejected={reason: count for reason, count in rejected.items() if count},
            by_route=_counts(_merged([routes for routes, _ in days.values()])),
            by_key=_counts(_merged([keys for _, keys in days.values()])),
            replays=int(fields.get("replays", 0)),
            unmetered=int(fields.get("unmetered", 0)),
            uncounted=int(fields.get("uncounted", 0)),
        )

    async def daily(self, customer: str, days: list[str]) -> list[DayUsage]:
        if not days:
            return []
        tag = self._tag(customer)
        client = self._client()
        wanted = set(days)
        found: dict[str, tuple[Table, Table]] = {}
        with translated():
            periods: str | None = await client.hget(f"{tag}:s", "P")
            for period_id in filter(None, (periods or "").split(",")):
                fields: dict[str, str] = await client.hgetall(f"{tag}:p:{period_id}")
                for day, (routes, keys) in _cells(fields, wanted).items():
                    held = found.setdefault(day, ({}, {}))
                    found[day] = (_merged([held[0], routes]), _merged([held[1], keys]))
        out = []
        for day in days:
            routes, keys = found.get(day, ({}, {}))
            calls = sum(c for c, _ in routes.values())
            records = sum(r for _, r in routes.values())
            out.append(DayUsage(day, calls, records, _counts(routes), _counts(keys)))
        return out
