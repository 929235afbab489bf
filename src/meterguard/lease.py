"""The fast path (``consistency: fast``): local decisions from leased units, usage flushed each second.

A process leases a small block of a customer's budget in the same atomic step that admits a
request: the block is counted in every rate window at once and reserved against the calls
quota, so the sum of every process's local decisions can never pass a limit. Requests then
draw on the lease with no store round trip; their usage (and their records) goes to the store
with the customer's next lease request (in the same batch, so Redis reads the customer's state
once for both), or once it is FLUSH_INTERVAL_SECONDS old, and at least every second. Unused units
go back when a lease expires, on idle and at shutdown. The next lease is asked for when a
quarter of the current one is left (RENEW_BELOW), by one request, while the others keep drawing
on the rest; requests that find no units while a lease is on its way wait for it (up to
LEASE_WAIT_SECONDS) rather than each asking the store.

Lease sizes follow each customer's observed rate (about a second of traffic, from 1 up to
MAX_LEASE units) and the store grants at most an eighth of what is left, so near a limit leases
shrink to nothing and every decision is made in the store again. Plans that bill overage are
never leased: every request of theirs is decided in the store, so the spend cap is exact.
What a process killed with SIGKILL loses is its usage not yet flushed: at most the units of
the leases it held, and at most one flush interval of its traffic (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .errors import StoreError
from .metrics import DISCARD, Metrics
from .plans import Window
from .store.base import AdmitRequest, Alerting, Decision, Flush, Settlement, Store, UsageRow, WindowState

log = logging.getLogger("meterguard.fast")

FLUSH_INTERVAL_SECONDS = 0.5  # usage older than this is flushed: "at least every second", with room for a round trip
FLUSH_TICK_SECONDS = FLUSH_INTERVAL_SECONDS / 2  # how often the flusher looks for usage that old
LEASE_SECONDS = 1.0  # a lease lives at most this long, and never past the end of a window slot
TARGET_LEASE_SECONDS = 1.0  # a lease should carry about this much of the customer's traffic
RENEW_BELOW = 4  # the next lease is asked for once a quarter of this one is left
LEASE_WAIT_SECONDS = 0.1  # a request waits this long at most for a lease already asked for
FIRST_LEASE = 4
MAX_LEASE = 256
EARLY_FLUSH_UNITS = MAX_LEASE // 2  # consumed units of one customer that trigger a flush before the interval
IDLE_PRUNE_AT = 10_000  # bookkeeping entries before idle ones are dropped

LeaseKey = tuple[str, str, tuple[Window, ...]]  # customer, period id, the windows the request touches
PendingKey = tuple[str, str, int, str]  # customer, period id, period end, day


@dataclass(slots=True)
class Lease:
    units: int  # left to hand out here
    granted: int
    started: float  # monotonic
    expires: float  # monotonic
    snapshot: Decision  # the store's decision that granted it
    used: int = 0
    period_end: int = 0
    day: str = ""
    flushed_mark: int = 0  # records this process had flushed when the lease was asked for


@dataclass(slots=True)
class _Pending:
    rows: dict[tuple[str, bool, str], list[int]] = field(default_factory=dict)  # (route, listed, key) -> [c, r]
    consumed: int = 0
    returned: int = 0
    windows: dict[tuple[Window, int], int] = field(default_factory=dict)  # (window, slot) -> units back
    alerting: Alerting | None = None  # the thresholds the store checks when this usage counts
    since: float = 0.0  # monotonic: when the oldest usage here was counted

    def empty(self) -> bool:
        return not self.rows and not self.consumed and not self.returned and not self.windows


class FastPath:
    metrics: Metrics = DISCARD  # a MeterGuard gives it its own

    def __init__(self, store: Store, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._monotonic = monotonic
        self._leases: dict[LeaseKey, Lease] = {}
        self._sizes: dict[LeaseKey, int] = {}
        # Lease requests in flight, done when their reply is in: the customer's other requests wait
        # for it and draw on it, instead of each asking the store for a decision of its own.
        self._leasing: dict[LeaseKey, asyncio.Future[None]] = {}
        self._pending: dict[PendingKey, _Pending] = {}
        # Records this process settled and flushed, per customer and period, so that a lease knows
        # which of its own records its snapshot of the store cannot have seen yet.
        self._settled: dict[tuple[str, str], int] = {}
        self._flushed: dict[tuple[str, str], int] = {}
        self._records_per_call: dict[tuple[str, str], float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._early: asyncio.Task[None] | None = None
        self._handing: set[asyncio.Task[None]] = set()  # usage handed over with a lease request

    # admission -----------------------------------------------------------------------------------

    def take(self, request: AdmitRequest) -> Decision | None:
        """The decision from this process's lease: a local decrement, no I/O. None when the store
        must decide (:meth:`admit`): no lease, or one that is used up, expired or near a quota,
        or one running low, for the request that asks the store for the next lease."""
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush_forever())
        key = (request.customer, request.period_id, request.windows)
        lease = self._leases.get(key)
        if lease is None or request.idempotency_key is not None or lease.units < request.weight:
            return None
        now = self._monotonic()
        if now >= lease.expires:
            return None
        records_known = self._records_known(request, lease)
        records = request.records
        if records.included is not None and not records.billed and records_known >= records.included:
            return None
        if lease.units - request.weight < lease.granted // RENEW_BELOW and key not in self._leasing:
            # Running low: this request asks the store for the next lease while the customer's
            # other requests go on drawing on what is left, so that they never wait for it.
            return None
        return self._take(lease, request, now, records_known)

    async def admit(self, request: AdmitRequest) -> Decision:
        decision = self.take(request)
        if decision is not None:
            return decision
        key: LeaseKey = (request.customer, request.period_id, request.windows)
        asked = self._leasing.get(key)
        if asked is not None and request.idempotency_key is None:
            # A lease for this customer is on its way: one round trip, the same a decision of our own
            # would take, and the store sees one request instead of a burst. Bounded, so that a
            # store that does not answer costs a waiter little more than it costs the one who asked.
            await asyncio.wait({asked}, timeout=LEASE_WAIT_SECONDS)
            decision = self.take(request)
            if decision is not None:
                return decision
        lease = self._leases.get(key)
        if lease is not None and (lease.units < request.weight or self._monotonic() >= lease.expires):
            self._retire(key, lease, self._monotonic())  # else running low: drawn on until the next one comes
        # One lease request per key at a time: a burst that finds no lease must not take one lease
        # per request (each would hold units until it expires); the others wait for it, or are
        # decided exactly.
        wanted = 0
        period = (request.customer, request.period_id)
        flushed_mark = self._flushed.get(period, 0)
        if request.idempotency_key is None and key not in self._leasing:
            wanted = self._lease_size(key, request, lease)
        if not wanted:
            return await self._store.admit(request)
        self._leasing[key] = asked = asyncio.get_running_loop().create_future()
        # The customer's usage so far rides along: queued in this tick, it goes to the store in the
        # same batch as the lease request, where both share one read of the customer's state.
        self._flush_now((request.customer, request.period_id, request.period_end, request.day))
        try:
            decision = await self._store.admit(replace(request, lease=wanted))
        finally:
            del self._leasing[key]
            asked.set_result(None)
        if decision.granted > 0:
            self.metrics.leases += 1
            self.metrics.lease_units += decision.granted
            now = self._monotonic()
            carried = 0
            previous = self._leases.get(key)
            if previous is not None:  # the lease this one follows (or a concurrent one)
                if previous.snapshot.slots == decision.slots and now < previous.expires:
                    # Reserved in the same window slots: what is left of it moves to the new lease.
                    carried, previous.units = previous.units, 0
                self._retire(key, previous, now)  # sizes the next lease; gives back what did not move
            slot_left = min((state.window.seconds - decision.now % state.window.seconds
                             for state in decision.windows), default=LEASE_SECONDS)  # fmt: skip
            self._leases[key] = Lease(
                units=decision.granted + carried,
                granted=decision.granted + carried,
                started=now,
                expires=now + min(LEASE_SECONDS, slot_left),
                snapshot=decision,
                period_end=request.period_end,
                day=request.day,
                flushed_mark=flushed_mark,
            )
        return decision

    def _lease_size(self, key: LeaseKey, request: AdmitRequest, last: Lease | None) -> int:
        wanted = self._sizes.get(key, FIRST_LEASE)
        records = request.records
        if records.included is not None and not records.billed and last is not None:
            # Records are known only after the response: lease no more calls than an eighth of the
            # records left could pay for at this customer's records per call, so that near the
            # records quota every request is decided in the store again.
            left = records.included - self._records_known(request, last)
            per_call = self._records_per_call.get((request.customer, request.period_id), 1.0)
            wanted = min(wanted, max(0, math.floor(left / 8 / max(per_call, 1e-9))))
        return wanted

    def _records_known(self, request: AdmitRequest, lease: Lease) -> int:
        period = (request.customer, request.period_id)
        return lease.snapshot.records_used + self._settled.get(period, 0) - lease.flushed_mark

    def _take(self, lease: Lease, request: AdmitRequest, now: float, records_known: int) -> Decision:
        weight = request.weight
        lease.units -= weight
        lease.used += weight
        pending = self._pending_for(request.customer, request.period_id, request.period_end, request.day)
        row = (request.route, request.listed, request.key_id)
        counts = pending.rows.get(row)
        if counts is None:
            counts = pending.rows[row] = [0, 0]
        counts[0] += weight
        pending.consumed += weight
        if request.alerting is not None:
            pending.alerting = request.alerting
        if pending.consumed >= EARLY_FLUSH_UNITS and self._early is None:
            # A busy customer's usage goes to the store before the interval ends: what a SIGKILL
            # loses stays within MAX_LEASE units, however fast leases are used up.
            self._early = asyncio.ensure_future(self._flush_early())
        snapshot = lease.snapshot
        age = now - lease.started
        units = lease.units
        return Decision(
            admitted=True,
            reason=None,
            violated=(),
            retry_after=0.0,
            # The leased units still here are this customer's to use: the store counted them already.
            windows=tuple(
                [
                    WindowState(state.window, state.remaining + units, max(state.reset_after - age, 0.0))
                    for state in snapshot.windows
                ]
            ),
            calls_used=snapshot.calls_used + lease.used,
            records_used=records_known,
            spend_cents=snapshot.spend_cents,
            now=snapshot.now + age,
            slots=snapshot.slots,
        )

    def _retire(self, key: LeaseKey, lease: Lease, now: float) -> None:
        """End a lease: size the next one from its rate, and give its unused units back."""
        if self._leases.get(key) is lease:
            del self._leases[key]
        age = max(now - lease.started, 1e-3)
        rate = lease.used / age
        self._sizes[key] = max(1, min(MAX_LEASE, math.ceil(rate * TARGET_LEASE_SECONDS)))
        if lease.units > 0:
            self.metrics.lease_returned += lease.units
            pending = self._pending_for(key[0], key[1], lease.period_end, lease.day)
            pending.returned += lease.units
            for state, slot in zip(lease.snapshot.windows, lease.snapshot.slots, strict=False):
                pending.windows[(state.window, slot)] = pending.windows.get((state.window, slot), 0) + lease.units
            lease.units = 0

    # settlement and flushing -----------------------------------------------------------------------

    def settle(self, settlement: Settlement) -> None:
        """Records of a response (and a refunded call), counted locally and flushed with the next
        batch. ``uncounted`` is not kept here: MeterEngine hands it to the store itself."""
        if settlement.records <= 0 and settlement.calls == 0:
            return
        pending = self._pending_for(settlement.customer, settlement.period_id, settlement.period_end, settlement.day)
        row = (settlement.route, settlement.listed, settlement.key_id)
        counts = pending.rows.get(row)
        if counts is None:
            counts = pending.rows[row] = [0, 0]
        counts[0] += settlement.calls  # a refund: the leased unit stays consumed, the call is not billed
        if settlement.records <= 0:
            return
        counts[1] += settlement.records
        if settlement.alerting is not None:
            pending.alerting = settlement.alerting
        period = (settlement.customer, settlement.period_id)
        self._settled[period] = self._settled.get(period, 0) + settlement.records
        average = self._records_per_call.get(period)
        self._records_per_call[period] = (
            settlement.records if average is None else 0.8 * average + 0.2 * settlement.records
        )

    def _pending_for(self, customer: str, period_id: str, period_end: int, day: str) -> _Pending:
        key = (customer, period_id, period_end, day)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(since=self._monotonic())
        return pending

    def _flush_now(self, key: PendingKey) -> None:
        """Hand one customer's pending usage to the store now, without waiting for it."""
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

    async def flush(self, older_than: float | None = None) -> None:
        """Hand pending usage and returned leases to the store: all of it, or what has waited at
        least ``older_than`` seconds (a busy customer's usage usually rides with its next lease).

        The store keeps a flush until it has applied it, exactly once (store/_ledger.py), so
        nothing is kept here for a second try: a flush sent again after a lost reply was how
        usage used to be counted twice.
        """
        now = self._monotonic()
        for lease_key, lease in list(self._leases.items()):
            if now >= lease.expires:
                self._retire(lease_key, lease, now)
        self._forget_idle()
        if older_than is None:
            batch, self._pending = self._pending, {}
        else:
            due = now - older_than
            # Units given back are due at once: other processes may be waiting for them.
            batch = {key: pending for key, pending in self._pending.items() if pending.since <= due or pending.returned}
            for key in batch:
                del self._pending[key]
        sent = [(key, pending) for key, pending in batch.items() if not pending.empty()]
        for key, pending in sent:
            self._sent(key, pending)
        results = await asyncio.gather(
            *(self._store.flush(_as_flush(key, pending)) for key, pending in sent), return_exceptions=True
        )
        for (key, _), result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):  # only a closed store raises here
                log.error("fast path: usage of %s could not be handed to the store: %s", key[0], result)

    def _forget_idle(self) -> None:
        """Drop the bookkeeping of customers and periods with no lease and nothing pending, so
        that a long-running process does not keep an entry per customer and month forever."""
        if len(self._sizes) + len(self._settled) < IDLE_PRUNE_AT:
            return
        busy = {(key[0], key[1]) for key in self._leases} | {(key[0], key[1]) for key in self._pending}
        for table in (self._settled, self._flushed, self._records_per_call):
            for period in [period for period in table if period not in busy]:
                del table[period]
        self._sizes = {key: size for key, size in self._sizes.items() if (key[0], key[1]) in busy}

    async def _flush_early(self) -> None:
        try:
            await self.flush()
        except StoreError as exc:  # pragma: no cover - the store keeps flushes itself
            log.warning("fast path: flush failed: %s", exc)
        finally:
            self._early = None

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_TICK_SECONDS)
            try:
                await self.flush(older_than=FLUSH_INTERVAL_SECONDS)
            except StoreError as exc:  # pragma: no cover - the store keeps flushes itself
                log.warning("fast path: flush failed: %s", exc)

    async def aclose(self) -> None:
        """Give every lease back and flush everything (at shutdown)."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._early is not None:
            await asyncio.gather(self._early, return_exceptions=True)
        if self._handing:
            await asyncio.gather(*self._handing, return_exceptions=True)
        now = self._monotonic()
        for key, lease in list(self._leases.items()):
            self._retire(key, lease, now)
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
