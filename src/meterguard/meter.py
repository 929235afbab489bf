"""Admission and settlement for one request, independent of the store backend.

Everything that depends only on (plan, route) is computed once and cached here: the windows a
request touches, the meters, the spend cap in cents and the RateLimit-Policy header bytes. The
period and the day are cached until they end, so the request path does no calendar arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._types import Clock
from .billing import cap_cents, meters
from .config import Config
from .lease import FastPath
from .periods import Period, day_id, period_for
from .plans import Route, Strategy, Window
from .responses import policy_header
from .store.base import AdmitRequest, Decision, Meter, Settlement, Store

SECONDS_PER_DAY = 86400


@dataclass(frozen=True, slots=True)
class Terms:
    """What a decision needs from a plan for one route; built once per (plan, route)."""

    windows: tuple[Window, ...]
    calls: Meter
    records: Meter
    spend_cap_cents: int | None
    policy: bytes
    strategy: Strategy


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted request's identity for settling its records."""

    customer: str
    key_id: str
    route: str
    listed: bool
    period: Period
    day: str


class MeterEngine:
    def __init__(self, config: Config, store: Store, clock: Clock) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._terms: dict[tuple[str, str | None], Terms] = {}
        self._periods: dict[int, Period] = {}
        self._day: tuple[str, float] = ("", 0.0)
        self._fast = FastPath(store) if config.consistency == "fast" else None
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
            terms = Terms(
                windows, calls, records, cap_cents(plan), policy_header(windows, calls, records), plan.strategy
            )
            self._terms[key] = terms
        return terms

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
        self, customer: str, key_id: str, anchor_day: int, route: Route | None, label: str, now: float | None = None
    ) -> Ticket:
        """Where a request's usage goes: its customer, key, route label, period and day."""
        moment = self._clock() if now is None else now
        return Ticket(customer, key_id, label, route is not None, self.period(anchor_day, moment), self.day(moment))

    async def admit(
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
    ) -> tuple[Decision, Terms, Ticket]:
        """``spend_cap_cents``: the customer's own cap, overriding the plan's."""
        now = self._clock()
        terms = self.terms(plan_name, route)
        ticket = self.ticket(customer, key_id, anchor_day, route, label, now)
        request = AdmitRequest(
            customer=customer,
            key_id=key_id,
            route=label,
            listed=route is not None,
            weight=weight,
            windows=terms.windows,
            strategy=terms.strategy,
            period_id=ticket.period.id,
            period_end=ticket.period.end_ts,
            calls=terms.calls,
            records=terms.records,
            spend_cap_cents=terms.spend_cap_cents if spend_cap_cents is None else spend_cap_cents,
            day=ticket.day,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=idempotency_fingerprint,
            served_on_loss=self._served_on_loss,
        )
        decision = await (self._fast.admit(request) if self._fast is not None else self._store.admit(request))
        return decision, terms, ticket

    async def settle(self, ticket: Ticket, records: int) -> None:
        if records <= 0:
            return
        settlement = Settlement(
            customer=ticket.customer,
            key_id=ticket.key_id,
            route=ticket.route,
            listed=ticket.listed,
            period_id=ticket.period.id,
            period_end=ticket.period.end_ts,
            records=records,
            day=ticket.day,
        )
        if self._fast is not None:
            self._fast.settle(settlement)
        else:
            await self._store.settle(settlement)

    async def aclose(self) -> None:
        """Flush the fast path's local usage and give its leases back."""
        if self._fast is not None:
            await self._fast.aclose()
