"""The embedded store: one process, no I/O, exact by construction.

Every method body runs without an ``await`` between reading and writing a counter, so under
asyncio each decision is atomic. Good for development, tests and single-process gateways;
``meterguard serve --workers N`` refuses it because each worker would count on its own.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from .._compiled import mypyc_attr
from .._types import Clock
from ..billing import spend_cents
from ..config import LedgerSettings
from ..plans import Window
from ..windows import wait
from ._memory_directory import MemoryDirectory
from ._memory_events import EventLog, usage_fields
from ._memory_tallies import MAX_CACHED_CELLS, Account, Cells, Tally, as_counts, window_states
from .base import (
    METER_CALLS,
    METER_RECORDS,
    METER_SPEND,
    AdmitRequest,
    Alerting,
    AlertSink,
    DayUsage,
    Decision,
    Fired,
    Flush,
    Reason,
    Settlement,
    StoredResponse,
    Usage,
    WindowState,
)

IDEMPOTENCY_LOCK_SECONDS = 300  # a key whose first request never finished frees after this
MAX_IDEMPOTENCY_KEYS = 100_000  # past this, expired keys are swept out


def in_process(store: object) -> MemoryStore | None:
    """``store`` if it is a MemoryStore whose ``admit`` and ``settle`` are its own, so that a
    caller may decide and settle through :meth:`MemoryStore.decide` and :meth:`MemoryStore.record`
    with no coroutine per request; a subclass that overrides them (a test's failing store) is
    called through them."""
    if (
        isinstance(store, MemoryStore)
        and type(store).admit is MemoryStore.admit
        and type(store).settle is MemoryStore.settle
    ):
        return store
    return None


# Subclassed by tests' failing stores (and maybe by users): allowed when compiled too.
@mypyc_attr(allow_interpreted_subclasses=True)
class MemoryStore(MemoryDirectory):
    def __init__(self, url: str = "memory://", *, clock: Clock = time.time) -> None:
        super().__init__()
        self.url = url
        self._clock = clock
        self._accounts: dict[str, Account] = {}
        self._periods: dict[tuple[str, str], Tally] = defaultdict(Tally)
        self._days: dict[tuple[str, str], Tally] = defaultdict(Tally)
        self._log = EventLog()
        # (customer, key) -> [fingerprint, "run" | "done", expiry, stored response]
        self._idempotency: dict[tuple[str, str], list[Any]] = {}
        self._alerted: dict[tuple[str, str], dict[int, int]] = {}  # (customer, period) -> meter -> thresholds fired
        self._alert_sink: AlertSink | None = None

    # metering -------------------------------------------------------------------------------------

    async def admit(self, request: AdmitRequest) -> Decision:
        return self.decide(request)

    def decide(self, request: AdmitRequest) -> Decision:
        """:meth:`admit` without the coroutine: what the middleware calls (see :func:`in_process`)."""
        decision = self._decide(request)
        if request.alerting is not None and decision.idempotency is None:
            self._check_alerts(request.customer, request.period_id, request.alerting)
        return decision

    def _check_alerts(self, customer: str, period_id: str, alerting: Alerting) -> None:
        """Each threshold of a meter fires once per period, in order of level, when the meter's
        level reaches it (store/lua/meter.lua does the same in Redis)."""
        tally = self._periods[(customer, period_id)]
        levels = {METER_CALLS: tally.calls, METER_RECORDS: tally.records}
        if alerting.spend:
            levels[METER_SPEND] = spend_cents(tally.calls, tally.records, alerting.calls, alerting.records)
        done = self._alerted.setdefault((customer, period_id), {})
        seen: dict[int, int] = {}
        fired: list[Fired] = []
        for threshold in alerting.thresholds:
            k = seen[threshold.meter] = seen.get(threshold.meter, 0) + 1
            level = levels.get(threshold.meter)
            if k > done.get(threshold.meter, 0) and level is not None and level >= threshold.units:
                done[threshold.meter] = k
                fired.append(Fired(customer, period_id, threshold.name, level))
        if fired and self._alert_sink is not None:
            self._alert_sink(fired)

    def set_alert_sink(self, sink: AlertSink | None) -> None:
        self._alert_sink = sink

    async def ack_alerts(self, customer: str, period_id: str, names: Sequence[str]) -> None:
        return None  # the sink heard them in this process: nothing waits here

    def _account(self, customer: str, period_id: str, day: str) -> Account:
        """The customer's account in this period and day. The request path looks in
        ``_accounts`` itself first, and calls this for a new customer, period or day only."""
        account = self._accounts.get(customer)
        if account is None:
            account = self._accounts[customer] = Account()
        if account.period_id != period_id:
            account.period_id, account.period = period_id, self._periods[(customer, period_id)]
            account.cells = {}
        if account.day_id != day:
            account.day_id, account.day = day, self._days[(customer, day)]
            account.cells = {}
        return account

    @staticmethod
    def _new_cells(account: Account, route: str, listed: bool, key_id: str) -> Cells:
        """The cells of a (route, key) not counted yet in the account's period and day (the
        request path looks in ``account.cells`` itself first)."""
        cells = account.cells
        if len(cells) >= MAX_CACHED_CELLS:  # keyed by raw unmatched paths, which are unbounded
            cells.clear()
        found = cells[(route, listed, key_id)] = Cells(account.period, account.day, route, listed, key_id)
        return found

    def _decide(self, request: AdmitRequest) -> Decision:
        now = self._clock()
        sliding = request.strategy == "sliding"
        customer, weight = request.customer, request.weight
        # _account and _new_cells are called for what is new only: a call frame costs as much as the lookup
        account = self._accounts.get(customer)
        if account is None or account.period_id != request.period_id or account.day_id != request.day:
            account = self._account(customer, request.period_id, request.day)
        tally = account.period
        # (window, previous, current, elapsed, estimate, its slots, slot index) before this request,
        # for a refusal's states: a refused request adds to no window's count in the headers either
        # (as the Redis store reports them). ``admitted``: the states as this request leaves the
        # windows if it is admitted, built in the same pass (admission is the common case; a refusal
        # drops them). The arithmetic is windows.estimate's, remaining's and reset_after's, written
        # out (the same expressions, so the same floats): this runs per window and request.
        counted: list[tuple[Window, int, int, float, float, dict[int, int], int]] = []
        admitted: list[WindowState] = []
        slots: list[int] = []  # each window's slot index, for Decision.slots
        violated: list[str] = []
        retry_after = 0.0
        windows = account.windows
        for window in request.windows:
            seconds, limit = window.seconds, window.limit
            index = math.floor(now / seconds)
            elapsed = now - index * seconds
            counts = windows.get(window.counter)
            if counts is None:
                counts = windows[window.counter] = {}
            current = counts.get(index)
            if current is None:
                # A new slot: drop the ones the sliding estimate no longer reads.
                for old in [slot for slot in counts if slot < index - 1]:
                    del counts[old]
                current = 0
            previous = counts.get(index - 1, 0)
            if sliding:  # the previous slot's share is the same before and after this request
                decayed = previous * (seconds - elapsed) / seconds
                used, after = decayed + current, decayed + (current + weight)
            else:
                used, after = float(current), float(current + weight)
            if used + weight > limit:
                violated.append(window.name)
                retry_after = max(retry_after, wait(previous, current, elapsed, seconds, limit, weight, sliding))
            counted.append((window, previous, current, elapsed, used, counts, index))
            if after + weight > limit:
                reset = wait(previous, current + weight, elapsed, seconds, limit, weight, sliding)
            else:
                reset = seconds - elapsed
            left = math.floor(limit - after + 1e-9)
            admitted.append(WindowState(window, left if left > 0 else 0, reset))
            slots.append(index)

        reason: Reason | None = None
        calls, records = request.calls, request.records
        # Meter.billed, read from its field: the property would cost a call each, per request
        calls_billed, records_billed = calls.unit > 0, records.unit > 0
        spend = spend_cents(tally.calls, tally.records, calls, records) if calls_billed or records_billed else 0
        replay = False
        if request.idempotency_key is not None:
            idempotency = (customer, request.idempotency_key)
            held = self._idempotency.get(idempotency)
            if held is not None and held[2] <= now:
                del self._idempotency[idempotency]
                held = None
            replay = held is not None and held[0] == request.idempotency_fingerprint and held[1] == "done"
            if held is not None and not replay:
                state = "mismatch" if held[0] != request.idempotency_fingerprint else "in_flight"
                return Decision(
                    admitted=False, reason=None, violated=(), retry_after=0.0,
                    windows=window_states(counted, weight, sliding), calls_used=tally.calls,
                    records_used=tally.records, spend_cents=spend, now=now, idempotency=state,  # type: ignore[arg-type]
                )  # fmt: skip
        if violated:
            reason = "rate_limited"
        elif not replay:
            if calls.included is not None and not calls_billed and tally.calls + weight > calls.included:
                violated.append("calls-period")
            if records.included is not None and not records_billed and tally.records >= records.included:
                violated.append("records-period")
            if violated:
                reason = "quota"
                retry_after = request.period_end - now
            elif request.spend_cap_cents is not None and spend >= request.spend_cap_cents:
                reason = "spend_cap"
                retry_after = request.period_end - now
        if reason is not None:
            tally.rejected[reason] += 1
            return Decision(
                admitted=False, reason=reason, violated=tuple(violated), retry_after=retry_after,
                windows=window_states(counted, weight, sliding), calls_used=tally.calls,
                records_used=tally.records, spend_cents=spend, now=now,
            )  # fmt: skip

        for _, _, _, _, _, counts, index in counted:  # the weight, added to every window
            counts[index] = counts.get(index, 0) + weight
        states, window_slots = tuple(admitted), tuple(slots)
        if replay:
            tally.replays += 1
            account.day.replays += 1
            self._log.usage(customer, request.period_id, request.day, now, replays=1)
        else:
            route, listed, key_id = request.route, request.listed, request.key_id
            cells = account.cells.get((route, listed, key_id)) or self._new_cells(account, route, listed, key_id)
            cells.add_calls(weight)
            self._log.usage(customer, request.period_id, request.day, now, weight, 0, 0, cells.label, key_id)
            if request.idempotency_key is not None:
                self._idempotency[(customer, request.idempotency_key)] = [
                    request.idempotency_fingerprint,
                    "run",
                    now + IDEMPOTENCY_LOCK_SECONDS,
                    None,
                ]
                if len(self._idempotency) > MAX_IDEMPOTENCY_KEYS:
                    self._idempotency = {k: v for k, v in self._idempotency.items() if v[2] > now}
            if key_id in self._key_ids:
                self._last_used[key_id] = now
        # Decision's fields in order, positionally: a keyword call costs more (this is per request)
        # admitted, reason, violated, retry_after, windows, calls_used, records_used, spend_cents, now,
        # granted, replay, slots
        return Decision(True, None, (), 0.0, states, tally.calls, tally.records, spend, now, 0, replay, window_slots)

    async def settle(self, settlement: Settlement) -> None:
        self.record(settlement)

    def record(self, settlement: Settlement) -> None:
        """:meth:`settle` without the coroutine (see :func:`in_process`)."""
        self.record_response(
            settlement.customer, settlement.key_id, settlement.route, settlement.listed, settlement.period_id,
            settlement.day, settlement.calls, settlement.records, settlement.uncounted, settlement.alerting,
        )  # fmt: skip

    def record_response(
        self, customer: str, key_id: str, route: str, listed: bool, period_id: str, day: str, calls: int,
        records: int, uncounted: int, alerting: Alerting | None,
    ) -> None:  # fmt: skip
        """:meth:`record` of a Settlement with these fields, without building one: what
        MeterEngine.settle_now calls for every response that adds something."""
        if records <= 0 and calls == 0 and uncounted <= 0:
            return
        account = self._accounts.get(customer)  # as in _decide
        if account is None or account.period_id != period_id or account.day_id != day:
            account = self._account(customer, period_id, day)
        if records < 0:  # max(0, records) without a builtin's call
            records = 0
        now = self._clock()
        if records or calls:
            cells = account.cells.get((route, listed, key_id)) or self._new_cells(account, route, listed, key_id)
            if calls:  # a refund (of a call whose records are not billed)
                cells.add_calls(calls)
            if records:
                cells.add_records(records)
            self._log.usage(customer, period_id, day, now, calls, records, 0, cells.label, key_id)
        if uncounted > 0:
            account.period.uncounted += uncounted
            fields = usage_fields(customer, period_id, day, now, 0, 0, 0, None, None)
            fields["uncounted"] = str(uncounted)
            self._log.append(customer, now, fields)
        if alerting is not None:
            self._check_alerts(customer, period_id, alerting)

    async def flush(self, flush: Flush) -> None:
        # The memory store never leases (it decides in-process already): only usage comes back.
        tally = self._periods[(flush.customer, flush.period_id)]
        day = self._days[(flush.customer, flush.day)]
        for row in flush.rows:
            cells = Cells(tally, day, row.route, row.listed, row.key_id)
            cells.add_calls(row.calls)
            cells.add_records(row.records)
            self._log.usage(flush.customer, flush.period_id, flush.day, self._clock(), row.calls, row.records, 0,
                            cells.label, row.key_id)  # fmt: skip
        if flush.alerting is not None:
            self._check_alerts(flush.customer, flush.period_id, flush.alerting)

    async def usage(self, customer: str, period_id: str) -> Usage:
        tally = self._periods.get((customer, period_id))
        if tally is None:
            return Usage()
        return Usage(
            tally.calls, tally.records, dict(tally.rejected), as_counts(tally.by_route), as_counts(tally.by_key),
            tally.replays, uncounted=tally.uncounted,
        )  # fmt: skip

    async def finish_idempotent(
        self, customer: str, key: str, fingerprint: str, response: StoredResponse | None, ttl_seconds: int
    ) -> None:
        held = self._idempotency.get((customer, key))
        if held is None or held[0] != fingerprint or held[1] != "run":
            return
        if response is None:
            del self._idempotency[(customer, key)]
        else:
            self._idempotency[(customer, key)] = [fingerprint, "done", self._clock() + ttl_seconds, response]

    async def stored_response(self, customer: str, key: str) -> StoredResponse | None:
        held = self._idempotency.get((customer, key))
        return held[3] if held is not None and held[2] > self._clock() else None

    async def daily(self, customer: str, days: list[str]) -> list[DayUsage]:
        result = []
        for day in days:
            tally = self._days.get((customer, day))
            if tally is None:
                result.append(DayUsage(day))
            else:
                by_route, by_key = as_counts(tally.by_route), as_counts(tally.by_key)
                result.append(DayUsage(day, tally.calls, tally.records, by_route, by_key))
        return result

    # audit log --------------------------------------------------------------------------------------

    async def append_event(self, customer: str, fields: Mapping[str, str]) -> str:
        return self._log.append(customer, self._clock(), fields)

    async def read_events(
        self, customer: str, group: str, consumer: str, count: int, *, pending: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        return self._log.read(customer, group, count, pending)

    async def ack_events(self, customer: str, group: str, ids: Sequence[str]) -> None:
        self._log.ack(customer, group, ids)

    async def range_events(self, customer: str, after: str, count: int) -> list[tuple[str, dict[str, str]]]:
        return self._log.range(customer, after, count)

    # lifecycle ----------------------------------------------------------------------------------------

    def configure_ledger(self, settings: LedgerSettings) -> None:
        return None  # nothing waits here: every write is applied at once, in this process

    async def start(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def diagnose(self) -> list[str]:
        return ["memory:// keeps usage in this process only: it is lost when the process ends"]

    async def aclose(self) -> None:
        return None
