"""Admission and settlement for one request, independent of the store backend.

Everything that depends only on (plan, route) is computed once and cached here: the windows a
request touches, the meters, the spend cap in cents and the RateLimit-Policy header bytes. The
period and the day are cached until they end, so the request path does no calendar arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ._types import Clock
from .alerts import alerting_for
from .billing import cap_cents, meters, over, spend_cents
from .config import Config
from .lease import FastPath
from .periods import Period, day_id, period_for
from .plans import DEFAULT_BILLABLE, Route, Strategy, Window
from .responses import MeteredHeaders, policy_header
from .store.base import AdmitRequest, Alerting, Decision, Meter, Settlement, Store
from .store.memory import in_process

if TYPE_CHECKING:
    from .store.memory import MemoryStore

SECONDS_PER_DAY = 86400
MAX_CACHED_REQUESTS = 100_000  # (customer, key, route, ...) entries of MeterEngine.request's cache


@dataclass(frozen=True, slots=True)
class Terms:
    """What a decision needs from a plan for one route; built once per (plan, route)."""

    windows: tuple[Window, ...]
    calls: Meter
    records: Meter
    spend_cap_cents: int | None
    policy: bytes
    strategy: Strategy
    headers: MeteredHeaders  # the metered headers of a decision under these terms
    weight: int = 1  # calls one request of the route costs
    billable: frozenset[int] = DEFAULT_BILLABLE  # response statuses whose call and records are billed
    alerting: Alerting | None = None  # the plan's alert thresholds, spend on the plan's cap

    def remaining(self, decision: Decision, spend_cap_cents: int | None) -> tuple[int | None, int | None]:
        """``calls_remaining`` and ``records_remaining`` of ``scope["meterguard"]`` (CONTRACT 11).

        What is left of a quota that refuses (``overage: block``); ``None`` where the plan sets no
        quota, and on a meter that bills its overage: a paying customer's page needs no cap. Once
        the spend cap is reached both read 0, as the next request is refused with 402.
        """
        calls, records = self.calls, self.records
        if (calls.billed or records.billed) and spend_cap_cents is not None and self._capped(decision, spend_cap_cents):
            return 0, 0
        # _left of each meter, written out: this runs for every admitted request
        calls_left = records_left = None
        if calls.included is not None and not calls.billed:
            calls_left = calls.included - decision.calls_used
            if calls_left < 0:
                calls_left = 0
        if records.included is not None and not records.billed:
            records_left = records.included - decision.records_used
            if records_left < 0:
                records_left = 0
        return calls_left, records_left

    def _capped(self, decision: Decision, cap: int) -> bool:
        calls, records = self.calls, self.records
        # Below both quotas nothing is spent: skip the pricing (a cap of 0 refused the call already).
        if over(decision.calls_used, calls) == 0 and over(decision.records_used, records) == 0:
            return cap <= 0
        return spend_cents(decision.calls_used, decision.records_used, calls, records) >= cap


@dataclass(slots=True)
class Ticket:
    """An admitted request's identity for settling its records."""

    customer: str
    key_id: str
    route: str
    listed: bool
    period: Period
    day: str
    weight: int = 1  # calls counted at admission: what a refund gives back
    alerting: Alerting | None = None  # thresholds the store checks when the settlement counts


class MeterEngine:
    def __init__(self, config: Config, store: Store, clock: Clock) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._terms: dict[tuple[str, str | None], Terms] = {}
        self._alertings: dict[tuple[str, int], Alerting | None] = {}
        self._periods: dict[int, Period] = {}
        self._day: tuple[str, float] = ("", 0.0)
        # The request of a (customer, key, plan, route, cap, anchor), with its terms and ticket,
        # until its period or day ends: every field of the two is the same for all of them, and
        # nothing changes either once built (a lease request is a copy), so requests share them.
        self._requests: dict[tuple[object, ...], tuple[AdmitRequest, Terms, Ticket, float, float]] = {}
        self._fast = FastPath(store) if config.consistency == "fast" else None
        # The memory store decides and settles without I/O: called directly, with no coroutine per request.
        self._local: MemoryStore | None = in_process(store) if self._fast is None else None
        # fail_open serves a request whose decision was lost: the store must count it once.
        self._served_on_loss = config.on_store_error == "fail_open"

    @property
    def fast_path(self) -> FastPath | None:
        return self._fast

    def adopt(self, previous: MeterEngine) -> None:
        """After a reload: keep the previous engine's fast path (its leases and unflushed usage)."""
        self._fast = previous._fast

    def terms(self, plan_name: str, route: Route | None) -> Terms:
        key = (plan_name, route.match if route is not None else None)
        terms = self._terms.get(key)
        if terms is None:
            plan = self._config.plans[plan_name]
            calls, records = meters(plan)
            windows = plan.windows_for(key[1])
            weight = route.weight if route is not None else 1
            policy = policy_header(windows, calls, records)
            terms = Terms(
                windows,
                calls,
                records,
                cap_cents(plan),
                policy,
                plan.strategy,
                MeteredHeaders(windows, policy, calls, records, weight),
                weight,
                plan.billable,
                alerting_for(plan, cap_cents(plan)),
            )
            self._terms[key] = terms
        return terms

    def alerting(self, plan_name: str, terms: Terms, spend_cap_cents: int | None) -> Alerting | None:
        """The terms' thresholds, or, for a customer with a cap of its own, those on that cap."""
        if terms.alerting is None or spend_cap_cents is None or spend_cap_cents == terms.spend_cap_cents:
            return terms.alerting
        key = (plan_name, spend_cap_cents)
        found = self._alertings.get(key)
        if found is None:
            if len(self._alertings) > 10_000:
                self._alertings.clear()
            found = self._alertings[key] = alerting_for(self._config.plans[plan_name], spend_cap_cents)
        return found

    def period(self, anchor_day: int, now: float) -> Period:
        period = self._periods.get(anchor_day)
        if period is None or not period.start_ts <= now < period.end_ts:
            period = period_for(now, anchor_day)
            self._periods[anchor_day] = period
        return period

    def day(self, now: float) -> str:
        day, end = self._day
        if now >= end or now < end - SECONDS_PER_DAY:
            day = day_id(now)
            self._day = (day, (now // SECONDS_PER_DAY + 1) * SECONDS_PER_DAY)
        return day

    def ticket(
        self,
        customer: str,
        key_id: str,
        anchor_day: int,
        route: Route | None,
        label: str,
        now: float | None = None,
        alerting: Alerting | None = None,
    ) -> Ticket:
        """Where a request's usage goes: its customer, key, route label, period and day."""
        moment = self._clock() if now is None else now
        weight = route.weight if route is not None else 1
        return Ticket(
            customer,
            key_id,
            label,
            route is not None,
            self.period(anchor_day, moment),
            self.day(moment),
            weight,
            alerting,
        )

    def request(
        self,
        customer: str,
        key_id: str,
        plan_name: str,
        anchor_day: int,
        route: Route | None,
        label: str,
        weight: int,
        idempotency_key: str | None = None,
        spend_cap_cents: int | None = None,
        idempotency_fingerprint: str = "",
    ) -> tuple[AdmitRequest, Terms, Ticket]:
        """What to ask the store (:meth:`decide_now`, else :meth:`decide`), under which terms, and
        the ticket that settles the response. ``spend_cap_cents``: the customer's own cap."""
        now = self._clock()
        cache_key = None
        if idempotency_key is None:
            cache_key = (customer, key_id, plan_name, label, route is not None, weight, spend_cap_cents, anchor_day)
            cached = self._requests.get(cache_key)
            if cached is not None and cached[3] <= now < cached[4]:
                return cached[0], cached[1], cached[2]
        terms = self.terms(plan_name, route)
        alerting = terms.alerting and self.alerting(plan_name, terms, spend_cap_cents)
        ticket = self.ticket(customer, key_id, anchor_day, route, label, now, alerting)
        period = ticket.period
        request = AdmitRequest(
            customer=customer,
            key_id=key_id,
            route=label,
            listed=route is not None,
            weight=weight,
            windows=terms.windows,
            strategy=terms.strategy,
            period_id=period.id,
            period_end=period.end_ts,
            calls=terms.calls,
            records=terms.records,
            spend_cap_cents=terms.spend_cap_cents if spend_cap_cents is None else spend_cap_cents,
            day=ticket.day,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=idempotency_fingerprint,
            served_on_loss=self._served_on_loss,
            alerting=alerting,
        )
        if cache_key is not None:
            if len(self._requests) >= MAX_CACHED_REQUESTS:
                self._requests.clear()
            day_end = self._day[1]
            self._requests[cache_key] = (
                request,
                terms,
                ticket,
                max(period.start_ts, day_end - SECONDS_PER_DAY),
                min(period.end_ts, day_end),
            )
        return request, terms, ticket

    def decide_now(self, request: AdmitRequest) -> Decision | None:
        """The decision, when it can be made here without I/O (the memory store, a fast-path
        lease); None when the store must be asked (:meth:`decide`)."""
        if self._local is not None:
            return self._local.decide(request)
        if self._fast is not None:
            return self._fast.take(request)
        return None

    async def decide(self, request: AdmitRequest) -> Decision:
        return await (self._fast.admit(request) if self._fast is not None else self._store.admit(request))

    def settle_now(
        self, ticket: Ticket, records: int, *, refund: bool = False, uncounted: int = 0
    ) -> Settlement | None:
        """Records of a response; ``refund``: its status is not billed, so its call is given back
        (and its records are not billed); ``uncounted``: responses whose records could not be counted.

        Applied here when that needs no I/O (the memory store, the fast path's local usage); else
        the settlement to hand to :meth:`settle_later`.
        """
        if refund:
            records = 0
        if records <= 0 and not refund and uncounted <= 0:
            return None
        calls = -ticket.weight if refund else 0
        if self._local is not None:  # the Settlement's fields, without building one
            self._local.record_response(ticket.customer, ticket.key_id, ticket.route, ticket.listed, ticket.period.id,
                                        ticket.day, calls, records, uncounted, ticket.alerting)  # fmt: skip
            return None
        if self._fast is not None and uncounted <= 0:  # likewise
            period = ticket.period
            self._fast.usage.record_response(ticket.customer, ticket.key_id, ticket.route, ticket.listed, period.id,
                                             period.end_ts, ticket.day, calls, records, ticket.alerting)  # fmt: skip
            return None
        settlement = Settlement(
            ticket.customer,
            ticket.key_id,
            ticket.route,
            ticket.listed,
            ticket.period.id,
            ticket.period.end_ts,
            records,
            ticket.day,
            calls,
            uncounted,
            ticket.alerting,
        )
        if self._fast is not None:
            self._fast.settle(settlement)
            if uncounted > 0:  # rare: straight to the store rather than a field in every flush
                return replace(settlement, records=0, calls=0)
            return None
        return settlement

    async def settle_later(self, settlement: Settlement) -> None:
        await self._store.settle(settlement)

    async def settle(self, ticket: Ticket, records: int, *, refund: bool = False, uncounted: int = 0) -> None:
        """:meth:`settle_now`, and what is left of it, in the store."""
        settlement = self.settle_now(ticket, records, refund=refund, uncounted=uncounted)
        if settlement is not None:
            await self._store.settle(settlement)

    async def aclose(self) -> None:
        """Flush the fast path's local usage and give its leases back."""
        if self._fast is not None:
            await self._fast.aclose()
