"""The fast path's usage kept in this process until it is handed to the store.

Every request drawn on a lease, every record settled and every unused leased unit given back is
counted here, per (customer, period, period end, day), and goes to the store as one
:class:`Flush` per customer: at the turn, with the customer's next lease request, or early when
a busy customer's consumed units pile up. The store keeps a flush until it has applied it,
exactly once (store/_ledger.py), so nothing is kept here once it is handed over.

It also remembers how many records this process settled and flushed per customer and period,
which a lease needs to know which of its own records the store's snapshot cannot have seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from .plans import Window
from .store.base import AdmitRequest, Alerting, Flush, Settlement, Store, UsageRow

log = logging.getLogger("meterguard.fast")

PendingKey = tuple[str, str, int, str]  # customer, period id, period end, day
Period = tuple[str, str]  # customer, period id


@dataclass(slots=True)
class _Pending:
    rows: dict[tuple[str, bool, str], list[int]] = field(default_factory=dict)  # (route, listed, key) -> [c, r]
    consumed: int = 0
    returned: int = 0
    windows: dict[tuple[Window, int], int] = field(default_factory=dict)  # (window, slot) -> units back
    alerting: Alerting | None = None  # the thresholds the store checks when this usage counts

    def empty(self) -> bool:
        return not self.rows and not self.consumed and not self.returned and not self.windows


class LeaseUsage:
    """Usage of leased units, settled records and returned units not yet handed to the store."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[PendingKey, _Pending] = {}
        # Records this process settled and flushed, per customer and period.
        self._settled: dict[Period, int] = {}
        self._flushed: dict[Period, int] = {}
        self._records_per_call: dict[Period, float] = {}
        self._handing: set[asyncio.Task[None]] = set()  # usage handed over with a lease request

    # counting ------------------------------------------------------------------------------------

    def draw(self, request: AdmitRequest) -> int:
        """Count a request admitted from a lease; the customer's units consumed since its last flush."""
        key = (request.customer, request.period_id, request.period_end, request.day)
        pending = self._pending.get(key)  # _pending_for, written out: this runs per request
        if pending is None:
            pending = self._pending[key] = _Pending()
        row = (request.route, request.listed, request.key_id)
        counts = pending.rows.get(row)
        if counts is None:
            counts = pending.rows[row] = [0, 0]
        weight = request.weight
        counts[0] += weight
        pending.consumed += weight
        if request.alerting is not None:
            pending.alerting = request.alerting
        return pending.consumed

    def give_back(self, key: PendingKey, units: int, slots: Iterable[tuple[Window, int]]) -> None:
        """Count a lease's unused units, to be taken out of each window slot it was counted in."""
        pending = self._pending_for(*key)
        pending.returned += units
        for window_slot in slots:
            pending.windows[window_slot] = pending.windows.get(window_slot, 0) + units

    def settle(self, settlement: Settlement) -> None:
        """:meth:`record_response` of a Settlement."""
        self.record_response(
            settlement.customer, settlement.key_id, settlement.route, settlement.listed, settlement.period_id,
            settlement.period_end, settlement.day, settlement.calls, settlement.records, settlement.alerting,
        )  # fmt: skip

    def record_response(
        self, customer: str, key_id: str, route: str, listed: bool, period_id: str, period_end: int, day: str,
        calls: int, records: int, alerting: Alerting | None,
    ) -> None:  # fmt: skip
        """Records of a response (and ``calls``: -weight for a refunded call), without building a
        Settlement: what MeterEngine.settle_now calls for every response that adds something.
        ``uncounted`` is not kept here: MeterEngine hands it to the store itself."""
        if records <= 0 and calls == 0:
            return
        key = (customer, period_id, period_end, day)
        pending = self._pending.get(key)  # _pending_for, written out: this runs per response
        if pending is None:
            pending = self._pending[key] = _Pending()
        row = (route, listed, key_id)
        counts = pending.rows.get(row)
        if counts is None:
            counts = pending.rows[row] = [0, 0]
        counts[0] += calls  # a refund: the leased unit stays consumed, the call is not billed
        if records <= 0:
            return
        counts[1] += records
        if alerting is not None:
            pending.alerting = alerting
        period = (customer, period_id)
        self._settled[period] = self._settled.get(period, 0) + records
        average = self._records_per_call.get(period)
        self._records_per_call[period] = records if average is None else 0.8 * average + 0.2 * records

    def _pending_for(self, customer: str, period_id: str, period_end: int, day: str) -> _Pending:
        key = (customer, period_id, period_end, day)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending()
        return pending

    # what a lease needs to know ------------------------------------------------------------------

    def settled(self, period: Period) -> int:
        return self._settled.get(period, 0)

    def flushed(self, period: Period) -> int:
        return self._flushed.get(period, 0)

    def records_per_call(self, period: Period) -> float:
        return self._records_per_call.get(period, 1.0)

    def periods(self) -> int:
        """How many (customer, period)s this process keeps records bookkeeping for."""
        return len(self._settled)

    def busy(self) -> set[Period]:
        return {(key[0], key[1]) for key in self._pending}

    def forget(self, busy: set[Period]) -> None:
        """Drop the records bookkeeping of every (customer, period) but those ``busy``."""
        for table in (self._settled, self._flushed, self._records_per_call):
            for period in [period for period in table if period not in busy]:
                del table[period]

    # handing over --------------------------------------------------------------------------------

    def hand_over(self, key: PendingKey) -> None:
        """Hand one customer's pending usage to the store now, without waiting for it: queued in
        this tick, it goes in the same batch as the lease request that follows."""
        pending = self._pending.pop(key, None)
        if pending is None or pending.empty():
            return
        self._sent(key, pending)
        task = asyncio.ensure_future(self._store.flush(_as_flush(key, pending)))
        self._handing.add(task)
        task.add_done_callback(self._handed)

    def _handed(self, task: asyncio.Task[None]) -> None:
        self._handing.discard(task)
        if not task.cancelled() and task.exception() is not None:  # only a closed store raises here
            log.error("fast path: usage could not be handed to the store: %s", task.exception())

    def _sent(self, key: PendingKey, pending: _Pending) -> None:
        period = (key[0], key[1])
        self._flushed[period] = self._flushed.get(period, 0) + sum(c[1] for c in pending.rows.values())

    async def flush(self, sparing: frozenset[Period] = frozenset()) -> None:
        """Hand all pending usage to the store but that of the (customer, period)s ``sparing``."""
        if sparing:
            batch = {key: pending for key, pending in self._pending.items() if (key[0], key[1]) not in sparing}
            for key in batch:
                del self._pending[key]
        else:
            batch, self._pending = self._pending, {}
        sent = [(key, pending) for key, pending in batch.items() if not pending.empty()]
        for key, pending in sent:
            self._sent(key, pending)
        results = await asyncio.gather(
            *(self._store.flush(_as_flush(key, pending)) for key, pending in sent), return_exceptions=True
        )
        for (key, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):  # only a closed store raises here
                log.error("fast path: usage of %s could not be handed to the store: %s", key[0], result)

    async def aclose(self) -> None:
        """Wait for the usage handed over, flush the rest, and say what could not be."""
        if self._handing:
            await asyncio.gather(*self._handing, return_exceptions=True)
        await self.flush()
        if self._pending:
            log.error("fast path: usage could not be flushed at shutdown: %s", sorted(k[0] for k in self._pending))


def _as_flush(key: PendingKey, pending: _Pending) -> Flush:
    customer, period_id, period_end, day = key
    return Flush(
        customer=customer,
        period_id=period_id,
        period_end=period_end,
        day=day,
        rows=tuple(
            UsageRow(route, listed, key_id, calls, records)
            for (route, listed, key_id), (calls, records) in pending.rows.items()
        ),
        consumed=pending.consumed,
        returned=pending.returned,
        windows=tuple((window, slot, units) for (window, slot), units in pending.windows.items()),
        alerting=pending.alerting,
    )
