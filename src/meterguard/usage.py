"""The usage document of the contract (section 7), built from a store's raw counters."""

from __future__ import annotations

from typing import Any

from .billing import cap_cents, line_cents, meters, money, over
from .config import Config
from .periods import Period, rfc3339
from .store.base import Counts, DayUsage, Meter, Usage


def _meter(used: int, meter: Meter) -> dict[str, int | None]:
    included = meter.included
    return {
        "used": used,
        "included": included,
        "remaining": None if included is None else max(0, included - used),
        "overage": over(used, meter),
    }


def _counts(table: Any) -> dict[str, dict[str, int]]:
    return {name: {"calls": c.calls, "records": c.records} for name, c in sorted(table.items())}


def usage_document(config: Config, customer: str, plan_name: str, period: Period, usage: Usage) -> dict[str, Any]:
    plan = config.plans[plan_name]
    calls, records = meters(plan)
    overage_cents = line_cents(over(usage.calls, calls), calls.unit, calls.price_micros) + line_cents(
        over(usage.records, records), records.unit, records.price_micros
    )
    base_cents = int(plan.price * 100)
    cap = cap_cents(plan)
    return {
        "customer": customer,
        "plan": plan_name,
        "period": {"start": rfc3339(period.start), "end": rfc3339(period.end)},
        "calls": _meter(usage.calls, calls),
        "records": _meter(usage.records, records),
        "charges": {
            "currency": config.currency,
            "base": money(base_cents),
            "overage": money(overage_cents),
            "total": money(base_cents + overage_cents),
            "spend_cap": money(cap) if cap is not None else None,
        },
        "rejected": {reason: usage.rejected.get(reason, 0) for reason in ("rate_limited", "quota", "spend_cap")},
        "by_route": _counts(usage.by_route),
        "by_key": _counts(usage.by_key),
    }


def daily_document(customer: str, days: list[DayUsage]) -> dict[str, Any]:
    return {
        "customer": customer,
        "days": [
            {
                "day": day.day,
                "calls": day.calls,
                "records": day.records,
                "by_route": _counts(day.by_route),
                "by_key": _counts(day.by_key),
            }
            for day in days
        ],
    }


__all__ = ["Counts", "daily_document", "usage_document"]
