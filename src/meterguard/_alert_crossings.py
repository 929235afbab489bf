"""What crossed: which alert thresholds usage has passed, and the event document each one sends.

Pure functions of a plan and its usage, no store and no I/O: alerts.py fires what they find, and
the metering side takes from alerting_for the thresholds a store checks as it counts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .billing import meters, money
from .periods import Period, rfc3339
from .plans import Plan
from .store.base import METER_CALLS, METER_RECORDS, METER_SPEND, Alerting, Threshold


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold reached: ``used >= threshold x limit`` on ``meter`` (spend in cents)."""

    meter: str  # "calls" | "records" | "spend"
    threshold: float
    used: int
    limit: int

    @property
    def name(self) -> str:
        return f"{self.meter}:{self.threshold:g}"


def crossed(
    thresholds: Sequence[float],
    *,
    calls: int,
    records: int,
    calls_limit: int | None,
    records_limit: int | None,
    spend_cents: int = 0,
    cap_cents: int | None = None,
) -> list[Crossing]:
    """Every (meter, threshold) that the usage has reached; pure, so any process decides the same.

    Exact in decimal: 0.8 of 1,000,000 is 800,000, not 800,000.0000000001. A meter without a
    limit (or with a limit of 0, where any use is "past" every fraction) raises no alert.
    """
    found: list[Crossing] = []
    for meter, used, limit in (
        ("calls", calls, calls_limit),
        ("records", records, records_limit),
        ("spend", spend_cents, cap_cents),
    ):
        if limit is None or limit <= 0:
            continue
        for threshold in thresholds:
            if used >= Decimal(repr(threshold)) * limit:
                found.append(Crossing(meter, threshold, used, limit))
    return found


def alerting_for(plan: Plan, cap: int | None) -> Alerting | None:
    """A plan's alert thresholds as a store checks them (store.base.Alerting): for each meter with
    a limit (the quotas; spend: ``cap``, in cents) and each fraction, the level that crosses it,
    exactly as :func:`crossed` decides (``used >= fraction x limit`` in decimal)."""
    if not plan.alerts:
        return None
    calls_meter, records_meter = meters(plan)
    thresholds = []
    for code, name, limit in (
        (METER_CALLS, "calls", plan.quotas.calls),
        (METER_RECORDS, "records", plan.quotas.records),
        (METER_SPEND, "spend", cap),
    ):
        if limit is None or limit <= 0:
            continue
        for fraction in sorted(plan.alerts):
            units = math.ceil(Decimal(repr(fraction)) * limit)
            thresholds.append(Threshold(f"{name}:{fraction:g}", code, units, fraction, limit))
    if not thresholds:
        return None
    return Alerting(tuple(thresholds), calls_meter, records_meter, cap)


def event_id(customer: str, period_id: str, name: str) -> str:
    """The same id for the same crossing in every process: a receiver can deduplicate on it."""
    digest = hashlib.sha256(f"{customer}\x00{period_id}\x00{name}".encode()).hexdigest()
    return f"alrt_{digest[:32]}"


def payload(crossing: Crossing, *, customer: str, plan: str, period: Period, at: float) -> dict[str, Any]:
    """The webhook body of one crossing (amounts as decimal strings, as everywhere else)."""
    spend = crossing.meter == "spend"
    return {
        "id": event_id(customer, period.id, crossing.name),
        "type": "spend.threshold" if spend else "quota.threshold",
        "customer": customer,
        "plan": plan,
        "period": period.id,
        "meter": crossing.meter,
        "threshold": crossing.threshold,
        "used": money(crossing.used) if spend else crossing.used,
        "limit": money(crossing.limit) if spend else crossing.limit,
        "at": rfc3339(datetime.fromtimestamp(at, UTC)),
    }


__all__ = ["Crossing", "alerting_for", "crossed", "event_id", "payload"]
