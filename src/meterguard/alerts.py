"""Threshold alerts: fired once per period, logged, and POSTed to a signed webhook.

A plan's ``alerts: [0.8, 1.0]`` are fractions of its calls and records quotas and, where the
customer has a spend cap, of that cap. :class:`Alerts` is what the gateway calls (cheaply, at
most about once a second per customer): it works out which thresholds the usage has crossed
(:func:`crossed`, pure), and for each one not yet claimed it asks the store to claim it and to
queue its webhook delivery in one atomic step, so that any number of gateway processes racing
on the same crossing fire it exactly once. :class:`Deliverer` runs in every gateway process and
drains the queue, which lives in the store so that a restart loses nothing: each delivery is
leased while it is being sent, retried with exponential backoff (1 s, 2 s, 4 s ... capped at
10 minutes) and given up, with an error logged, 24 hours after it was queued.

Requests are signed as Stripe signs its webhooks: ``Meterguard-Signature: t=<unix>,v1=<hex>``
where the hex is HMAC-SHA256 of ``"<t>.<body>"`` under the shared secret; receivers should
check the time as well, to refuse replays (:func:`verify`). Delivery is at least once: a
receiver deduplicates on ``Meterguard-Event-Id`` (the body's ``id``).

This module fires; what crossed and the event documents are _alert_crossings.py, the signing
and the delivery of webhooks _alert_webhooks.py. Their public names are imported from here.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ._alert_crossings import Crossing, alerting_for, crossed, event_id, payload
from ._alert_webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, Deliverer, post, sign, verify
from ._types import Clock
from .billing import cap_cents, meters, spend_cents
from .config import Config
from .periods import Period, period_named
from .plans import Plan
from .store.base import AlertQueue, CustomerRecord, Delivery, Fired, Usage

log = logging.getLogger("meterguard.alerts")

CLAIM_KEEP_SECONDS = 400 * 86_400  # claims outlive their period, as the period counters do
_UNSET: Any = object()


class Alerts:
    """Decides and fires alerts; the gateway calls :meth:`check` after its decisions.

    Claimed crossings are remembered in this process, so a check whose crossings have all
    fired makes no store round trip at all.
    """

    def __init__(self, config: Config, store: AlertQueue, *, clock: Clock = time.time) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        self._queued = config.webhooks is not None
        self._fired: dict[tuple[str, str], set[str]] = {}

    async def check(
        self,
        customer: str,
        plan: Plan | str,
        period: Period,
        usage: Usage,
        *,
        spend_cap_cents: int | None = _UNSET,
    ) -> list[Crossing]:
        """Fire every threshold that ``usage`` has newly crossed; returns those this call fired.

        ``spend_cap_cents`` is the customer's effective cap (billing.cap_cents with the customer's
        own cap); left out, the plan's.
        """
        plan = plan if isinstance(plan, Plan) else self.config.plans[plan]
        if not plan.alerts:
            return []
        calls_meter, records_meter = meters(plan)
        cap = cap_cents(plan) if spend_cap_cents is _UNSET else spend_cap_cents
        spend = spend_cents(usage.calls, usage.records, calls_meter, records_meter) if cap is not None else 0
        crossings = crossed(
            plan.alerts,
            calls=usage.calls,
            records=usage.records,
            calls_limit=plan.quotas.calls,
            records_limit=plan.quotas.records,
            spend_cents=spend,
            cap_cents=cap,
        )
        if not crossings:
            return []
        fired = self._fired_in(customer, period.id)
        newly: list[Crossing] = []
        for crossing in crossings:
            if crossing.name in fired:
                continue
            if await self._claim(customer, plan, period, crossing):
                newly.append(crossing)
            fired.add(crossing.name)
        return newly

    async def fire(self, fired: Fired, record: CustomerRecord) -> bool:
        """Claim and queue one threshold a store reported crossed (store.base.Fired); False when
        another process already did, or the plan no longer has that threshold."""
        if fired.name in self._fired_in(fired.customer, fired.period_id):
            return False
        plan = self.config.plans.get(record.plan)
        if plan is None:
            return False
        cap = cap_cents(plan, record.spend_cap)
        alerting = alerting_for(plan, cap)
        threshold = next((t for t in alerting.thresholds if t.name == fired.name), None) if alerting else None
        if threshold is None:
            return False
        anchor = record.anchor_day if self.config.anchor == "anniversary" else 1
        period = period_named(fired.period_id, anchor)
        meter = fired.name.partition(":")[0]
        won = await self._claim(
            fired.customer, plan, period, Crossing(meter, threshold.fraction, fired.level, threshold.limit)
        )
        self._fired_in(fired.customer, fired.period_id).add(fired.name)
        return won

    async def _claim(self, customer: str, plan: Plan, period: Period, crossing: Crossing) -> bool:
        """Claim the crossing and queue its webhook in one atomic step: once in every process."""
        now = self._clock()
        body = payload(crossing, customer=customer, plan=plan.name, period=period, at=now)
        delivery = Delivery(str(body["id"]), json.dumps(body, separators=(",", ":")), 0, now) if self._queued else None
        won = await self.store.claim_alert(customer, period.id, crossing.name, delivery, now, CLAIM_KEEP_SECONDS)
        if won:
            log.warning(
                "alert %s: customer %s (plan %s) reached %g of its %s %s in period %s: %s of %s",
                body["type"],
                customer,
                plan.name,
                crossing.threshold,
                crossing.meter,
                "cap" if crossing.meter == "spend" else "quota",
                period.id,
                body["used"],
                body["limit"],
            )
        return won

    def _fired_in(self, customer: str, period_id: str) -> set[str]:
        key = (customer, period_id)
        fired = self._fired.get(key)
        if fired is None:
            if len(self._fired) > 100_000:  # a bound on memory; forgetting costs one claim round trip
                self._fired.clear()
            fired = self._fired[key] = set()
        return fired


__all__ = [
    "Alerts",
    "Crossing",
    "Deliverer",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "alerting_for",
    "crossed",
    "event_id",
    "payload",
    "post",
    "sign",
    "verify",
]
