"""Metering on Redis: admissions and usage as ledger batches (store/_ledger.py, store/lua/meter.lua).

This module sends a batch of per-customer work as one METER call and reads the counters back for
usage documents; the call's wire format (KEYS and one MessagePack argument, the replies as decisions) is
store/_redis_meter_wire.py. A mixin of RedisStore.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ..config import LedgerSettings
from ._budgets import Budgets
from ._ledger import Ledger
from ._ledger_entries import Reply, Usage, Work
from ._redis_client import RedisBase, load_script, translated
from ._redis_meter_wire import Batch, Encoded, batch_payload, decision, recorded_reply
from ._spool import Spool
from .base import (
    MAX_UNLISTED_ROUTES,
    OTHER_ROUTE,
    AdmitRequest,
    AlertSink,
    Counts,
    DayUsage,
    Decision,
    Fired,
    Flush,
    Settlement,
)
from .base import Usage as UsageCounts

DAY = 86_400
PERIOD_AUDIT_SECONDS = 400 * DAY  # period counters outlive the period end this long, for audits
STATE_TTL_SECONDS = 400 * DAY  # a customer's state hash and event stream, from their last daily refresh
IDEMPOTENCY_LOCK_SECONDS = 300  # an Idempotency-Key whose first request never finished frees after this
DEFAULT_EVENTS_MAX_LEN = 1_000_000  # usage events kept per customer, exported or not (approximate)
SEP = "\x1f"  # between the parts of an audit cell's field name; control characters never reach labels

METER = load_script("meter")


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
        self.ledger = Ledger(self._run_batch, self._group_of, admit_seconds=self.timeout)
        self._alert_sink: AlertSink | None = None
        self._encoded = Encoded()  # what one batch's encoding leaves for the next (Batch)
        self._budgets = Budgets(self.timeout)  # how long a settlement's caller waits for it

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
            admit_seconds=self.timeout,
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
        batch = Batch(self._tag, self._encoded)
        groups = [batch.work(work) for work in works]
        self._settings[4] = self.events_max_len
        payload = batch_payload(
            {"s": self._settings, "w": self.ledger.writer, "q": seq, "d": deadline_ms, "t": batch.terms, "g": groups}
        )
        started = time.perf_counter()
        sec, usec, *replies = await self._hot_script(METER, batch.keys, [payload])
        self.metrics.store_call("batch", time.perf_counter() - started, len(works))
        sec, usec = int(sec), int(usec)  # the script's run, once for every group of the batch
        out = []
        fired: list[Fired] = []
        for work, reply in zip(works, replies, strict=True):
            status = str(reply[0])
            if status == "stale":
                out.append(Reply(status, [], sec, usec))
                continue
            if status == "dup":  # a repeat: the decisions recorded when it ran, and when that was
                out.append(Reply(status, [recorded_reply(entry) for entry in reply[3]], int(reply[1]), int(reply[2])))
                continue
            out.append(Reply(status, list(reply[1]), sec, usec))
            if len(reply) > 2:  # alerts fired and not yet acknowledged: {period id, "name=level,...", ...}
                pending = reply[2]
                for period_id, entries in zip(pending[::2], pending[1::2], strict=True):
                    for entry in str(entries).split(","):
                        name, _, level = entry.rpartition("=")
                        fired.append(Fired(work.customer, str(period_id), name, int(level)))
        if fired and self._alert_sink is not None:
            self._alert_sink(fired)
        return sec, usec, out

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

    async def _applied(self, waiter: asyncio.Future[None]) -> None:
        """Wait for the store to apply usage, but no longer than an admission would wait: the
        ledger keeps it until it is applied, whatever happens to the caller.

        ``waiter`` is this call's own (Ledger.record), so giving up ends it; the ledger completes
        only waiters still pending. One timer for every settlement's budget (store/_budgets.py):
        a timer each cost ~2.5 us, on every request of exact mode.
        """
        if waiter.done():
            return
        self._budgets.watch(waiter)
        await waiter

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
