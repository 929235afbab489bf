"""The fast path (``consistency: fast``): local decisions from leased units, usage flushed each second.

A process leases a small block of a customer's budget in the same atomic step that admits a
request: the block is counted in every rate window at once and reserved against the calls
quota, so the sum of every process's local decisions can never pass a limit. Requests then
draw on the lease with no store round trip.

Every lease ends at the next whole second of the store's clock (the *turn*): every window's
slots start on a whole second, so no leased unit is ever used in a slot other than the one it
was counted in. Just after each turn, one task here asks the store for the next lease of every
customer that drew on its lease in the second that ended (a lease-only admission, no call
counted), with that customer's usage and unused units riding in the same batch, where Redis
reads the customer's state once for all of it; usage no lease request carries is flushed then
too. So a steady customer costs one store call per second and its requests never wait for
one. Requests still ask the store themselves when they find no lease (a new customer, a lease
refused near a limit) or when a burst runs the lease low (the next is asked for when a quarter
is left, RENEW_BELOW, by one request while the others keep drawing on the rest); requests that
find no units while a lease is on its way wait for it (up to LEASE_WAIT_SECONDS) rather than
each asking the store.

Lease sizes follow each customer's observed rate (LEASE_MARGIN times its traffic until the
turn, from 1 up to MAX_LEASE units) and the store grants at most an eighth of what is left, so
near a limit leases shrink to nothing and every decision is made in the store again. Plans that
bill overage are never leased: every request of theirs is decided in the store, so the spend
cap is exact. What a process killed with SIGKILL loses is its usage not yet flushed: at most the
units of the leases it held, and at most one second of its traffic (docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ._lease_usage import LeaseUsage, Period
from .errors import StoreError
from .metrics import DISCARD, Metrics
from .plans import Window
from .store.base import AdmitRequest, Decision, Settlement, Store, WindowState

log = logging.getLogger("meterguard.fast")

LEASE_SECONDS = 1.0  # a lease lives at most this long: until the store's next whole second (the turn)
TURN_DELAY_SECONDS = 0.02  # the turn runs this long after the store's whole second, as this process reckons it
AHEAD_PER_CALL = 64  # lease requests the turn sends per script call (as store/_ledger.py's MAX_USAGES)
FLUSH_INTERVAL_SECONDS = LEASE_SECONDS  # usage is flushed at every turn: "at least every second"
LEASE_MARGIN = 1.5  # a lease carries this many times the customer's expected traffic until the turn
RATE_MEMORY_SECONDS = 1.0  # a lease this long replaces the rate estimate; a shorter one moves it in proportion
RENEW_BELOW = 4  # the next lease is asked for once a quarter of this one is left
LEASE_WAIT_SECONDS = 0.1  # a request waits this long at most for a lease already asked for
FIRST_LEASE = 4
MAX_LEASE = 256
EARLY_FLUSH_UNITS = MAX_LEASE // 2  # consumed units of one customer that trigger a flush before the interval
IDLE_PRUNE_AT = 10_000  # bookkeeping entries before idle ones are dropped

LeaseKey = tuple[str, str, tuple[Window, ...]]  # customer, period id, the windows the request touches


@dataclass(slots=True)
class Lease:
    units: int  # left to hand out here
    granted: int
    started: float  # monotonic
    expires: float  # monotonic
    snapshot: Decision  # the store's decision that granted it
    request: AdmitRequest  # the request that asked for it: the next lease is asked for on its terms
    asked: bool = False  # by a request (not by the turn): its customer was active in that second
    used: int = 0
    period_end: int = 0
    day: str = ""
    flushed_mark: int = 0  # records this process had flushed when the lease was asked for


class FastPath:
    metrics: Metrics = DISCARD  # a MeterGuard gives it its own

    def __init__(self, store: Store, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._monotonic = monotonic
        self._leases: dict[LeaseKey, Lease] = {}
        self._rates: dict[LeaseKey, float] = {}  # units per second each key's leases were drawn on
        # Lease requests in flight, done when their reply is in: the customer's other requests wait
        # for it and draw on it, instead of each asking the store for a decision of its own.
        self._leasing: dict[LeaseKey, asyncio.Future[None]] = {}
        self.usage = LeaseUsage(store)  # what is counted here and not yet in the store
        self._turner: asyncio.Task[None] | None = None
        self._early: asyncio.Task[None] | None = None
        self._asking: set[asyncio.Task[Decision]] = set()  # the leases the turn asks for
        self._skew = 0.0  # the store's clock minus this one, at the last lease (from its reply)

    # admission -----------------------------------------------------------------------------------

    def take(self, request: AdmitRequest) -> Decision | None:
        """The decision from this process's lease: a local decrement, no I/O. None when the store
        must decide (:meth:`admit`): no lease, or one that is used up, expired or near a quota,
        or one running low, for the request that asks the store for the next lease."""
        if self._turner is None:
            self._turner = asyncio.ensure_future(self._turn_forever())
        key = (request.customer, request.period_id, request.windows)
        lease = self._leases.get(key)
        weight = request.weight
        if lease is None or request.idempotency_key is not None or lease.units < weight:
            return None
        now = self._monotonic()
        if now >= lease.expires:
            return None
        # _records_known, written out: this and the rest run for nearly every request
        records_known = lease.snapshot.records_used + self.usage.settled((key[0], key[1])) - lease.flushed_mark
        records = request.records
        if records.included is not None and not records.billed and records_known >= records.included:
            return None
        units = lease.units - weight
        if units < lease.granted // RENEW_BELOW and key not in self._leasing:
            # Running low: this request asks the store for the next lease while the customer's
            # other requests go on drawing on what is left, so that they never wait for it.
            return None
        lease.units = units
        lease.used += weight
        if self.usage.draw(request) >= EARLY_FLUSH_UNITS and self._early is None:
            # A busy customer's usage goes to the store before the interval ends: what a SIGKILL
            # loses stays within MAX_LEASE units, however fast leases are used up.
            self._early = asyncio.ensure_future(self._flush_early())
        snapshot = lease.snapshot
        age = now - lease.started
        # The leased units still here are this customer's to use: the store counted them already.
        # (A loop, not a comprehension: in Python 3.11 that is a call of its own, on every request.)
        windows = []
        for state in snapshot.windows:
            reset = state.reset_after - age
            windows.append(WindowState(state.window, state.remaining + units, reset if reset > 0.0 else 0.0))
        # Decision's fields in order, positionally (a keyword call costs 0.2 us more, per request):
        # admitted, reason, violated, retry_after, windows, calls_used, records_used, spend_cents,
        # now, granted, replay, slots
        return Decision(True, None, (), 0.0, tuple(windows), snapshot.calls_used + lease.used, records_known,
                        snapshot.spend_cents, snapshot.now + age, 0, False, snapshot.slots)  # fmt: skip

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
        if request.idempotency_key is None and key not in self._leasing:
            wanted = self._lease_size(key, request, lease)
        if not wanted:
            return await self._store.admit(request)
        return await self._lease(key, replace(request, lease=wanted), request)

    async def _lease(self, key: LeaseKey, asking: AdmitRequest, terms: AdmitRequest) -> Decision:
        """Ask the store for a lease (``asking``: a request's admission, or the turn's lease-only
        one) and keep what it grants; ``terms``: the request the next lease is asked for on."""
        self._leasing[key] = asked = asyncio.get_running_loop().create_future()
        flushed_mark = self.usage.flushed((asking.customer, asking.period_id))
        # The customer's usage so far rides along: queued in this tick, it goes to the store in the
        # same batch as the lease request, where both share one read of the customer's state.
        self.usage.hand_over((asking.customer, asking.period_id, asking.period_end, asking.day))
        sent = self._monotonic()
        try:
            decision = await self._store.admit(asking)
        finally:
            del self._leasing[key]
            asked.set_result(None)
        self._skew = decision.now - time.time()  # late by half a round trip: the turn waits TURN_DELAY_SECONDS
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
                self._retire(key, previous, now)  # gives back what did not move
            # Until the store's next whole second, where every window's slot starts: measured from
            # when the request left, which the store's clock can only be later than.
            turn_left = min((state.window.seconds - decision.now % state.window.seconds
                             for state in decision.windows), default=LEASE_SECONDS)  # fmt: skip
            self._leases[key] = Lease(
                units=decision.granted + carried,
                granted=decision.granted + carried,
                started=now,
                expires=sent + min(LEASE_SECONDS, 1.0 - decision.now % 1.0, turn_left),
                snapshot=decision,
                request=terms,
                asked=asking.weight > 0,
                period_end=asking.period_end,
                day=asking.day,
                flushed_mark=flushed_mark,
            )
        return decision

    def _lease_size(self, key: LeaseKey, request: AdmitRequest, last: Lease | None) -> int:
        """Units to ask for: LEASE_MARGIN times the key's traffic until the turn, at its rate so far."""
        rate = self._rates.get(key)
        if rate is None:
            wanted = FIRST_LEASE
        else:
            until_turn = 1.0 - (time.time() + self._skew) % 1.0  # as this process reckons it: a size, not a bound
            wanted = max(1, min(MAX_LEASE, math.ceil(rate * until_turn * LEASE_MARGIN)))
        records = request.records
        if records.included is not None and not records.billed and last is not None:
            # Records are known only after the response: lease no more calls than an eighth of the
            # records left could pay for at this customer's records per call, so that near the
            # records quota every request is decided in the store again.
            left = records.included - self._records_known(request, last)
            per_call = self.usage.records_per_call((request.customer, request.period_id))
            wanted = min(wanted, max(0, math.floor(left / 8 / max(per_call, 1e-9))))
        return wanted

    def _records_known(self, request: AdmitRequest, lease: Lease) -> int:
        settled_here = self.usage.settled((request.customer, request.period_id))
        return lease.snapshot.records_used + settled_here - lease.flushed_mark

    def _retire(self, key: LeaseKey, lease: Lease, now: float) -> None:
        """End a lease: learn the key's rate from it, and give its unused units back."""
        if self._leases.get(key) is lease:
            del self._leases[key]
        age = max(now - lease.started, 1e-3)
        rate, known = lease.used / age, self._rates.get(key)
        # A lease cut short by a renewal or the turn says little about the rate: it moves the
        # estimate in proportion to how long it lived.
        self._rates[key] = rate if known is None else known + (rate - known) * min(1.0, age / RATE_MEMORY_SECONDS)
        if lease.units > 0:
            self.metrics.lease_returned += lease.units
            slots = zip((state.window for state in lease.snapshot.windows), lease.snapshot.slots, strict=False)
            self.usage.give_back((key[0], key[1], lease.period_end, lease.day), lease.units, slots)
            lease.units = 0

    # settlement and flushing -----------------------------------------------------------------------

    def settle(self, settlement: Settlement) -> None:
        """Records of a response (and a refunded call), counted here and flushed with the next batch."""
        self.usage.settle(settlement)

    async def flush(self, sparing: frozenset[Period] = frozenset()) -> None:
        """Hand pending usage and returned leases to the store (at every turn, and at shutdown),
        but that of the (customer, period)s ``sparing``: their next lease request takes it along.

        The store keeps a flush until it has applied it, exactly once (store/_ledger.py), so
        nothing is kept here for a second try: a flush sent again after a lost reply was how
        usage used to be counted twice.
        """
        now = self._monotonic()
        for lease_key, lease in list(self._leases.items()):
            if now >= lease.expires:
                self._retire(lease_key, lease, now)
        self._forget_idle()
        await self.usage.flush(sparing)

    def _forget_idle(self) -> None:
        """Drop the bookkeeping of customers and periods with no lease and nothing pending, so
        that a long-running process does not keep an entry per customer and month forever."""
        if len(self._rates) + self.usage.periods() < IDLE_PRUNE_AT:
            return
        busy = {(key[0], key[1]) for key in self._leases} | self.usage.busy()
        self.usage.forget(busy)
        self._rates = {key: rate for key, rate in self._rates.items() if (key[0], key[1]) in busy}

    async def _flush_early(self) -> None:
        try:
            await self.flush()
        except StoreError as exc:  # pragma: no cover - the store keeps flushes itself
            log.warning("fast path: flush failed: %s", exc)
        finally:
            self._early = None

    async def _turn_forever(self) -> None:
        while True:
            # On the store's clock, as this process last saw it: its whole second is the turn.
            await asyncio.sleep(1.0 - (time.time() + self._skew) % 1.0 + TURN_DELAY_SECONDS)
            try:
                await self._turn()
            except StoreError as exc:  # pragma: no cover - the store keeps flushes itself
                log.warning("fast path: flush failed: %s", exc)

    async def _turn(self) -> None:
        """Just after a whole second, when every lease has ended: ask for the next lease of each
        customer that had requests in the second that ended, busiest first, so that its
        requests find one waiting, with its usage riding along; the usage of every other
        customer is flushed at once.

        AHEAD_PER_CALL at a time, one round trip each: every lease request of a batch goes in
        one script call, and a call for thousands of customers would hold Redis for seconds.
        A customer whose request comes first asks on its own, as without the turn.
        """
        now = self._monotonic()
        ended: list[tuple[LeaseKey, Lease]] = []
        for key, lease in list(self._leases.items()):
            if now >= lease.expires:
                self._retire(key, lease, now)
                if lease.used or lease.asked:  # the customer had requests in that second
                    ended.append((key, lease))
        ended.sort(key=lambda item: self._rates.get(item[0], 0.0), reverse=True)
        flushing = None
        for start in range(0, len(ended), AHEAD_PER_CALL):
            asked = [self._ask_ahead(key, lease) for key, lease in ended[start : start + AHEAD_PER_CALL]]
            if flushing is None:  # after the first lease requests: they take their usage first
                flushing = asyncio.ensure_future(self.flush(sparing=frozenset((key[0], key[1]) for key, _ in ended)))
            await asyncio.gather(*filter(None, asked), return_exceptions=True)
        await (flushing or self.flush())

    def _ask_ahead(self, key: LeaseKey, ended: Lease) -> asyncio.Task[Decision] | None:
        """The next lease for a key whose lease just ended: a lease-only admission (weight 0, no
        call counted) on the terms of the request that asked for the last one, with the
        customer's usage riding along. None when a request of the customer has asked already."""
        if key in self._leasing or key in self._leases:
            return None
        terms = ended.request
        wanted = self._lease_size(key, terms, ended)
        if not wanted:  # near its records quota: no lease, but its usage goes all the same
            self.usage.hand_over((terms.customer, terms.period_id, terms.period_end, terms.day))
            return None
        asking = replace(terms, weight=0, lease=wanted, idempotency_key=None, served_on_loss=False)
        task = asyncio.ensure_future(self._lease(key, asking, terms))
        self._asking.add(task)
        task.add_done_callback(self._asked)
        return task

    def _asked(self, task: asyncio.Task[Decision]) -> None:
        self._asking.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The store is away: the customer's next request asks on its own, as after any failure.
            log.debug("fast path: a lease asked for at the turn failed: %s", task.exception())

    async def aclose(self) -> None:
        """Give every lease back and flush everything (at shutdown)."""
        if self._turner is not None:
            self._turner.cancel()
            await asyncio.gather(self._turner, return_exceptions=True)
            self._turner = None
        if self._asking:
            await asyncio.gather(*self._asking, return_exceptions=True)
        if self._early is not None:
            await asyncio.gather(self._early, return_exceptions=True)
        now = self._monotonic()
        for key, lease in list(self._leases.items()):
            self._retire(key, lease, now)
        await self.usage.aclose()
