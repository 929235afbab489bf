"""The usage document of the contract (section 7), built from a store's raw counters."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .billing import base_cents, cap_cents, meters, money, over, overage_lines
from .config import Config
from .periods import Period, rfc3339
from .plans import Plan
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


def charges(
    currency: str, plan: Plan, calls_used: int, records_used: int, spend_cap: Decimal | None = None
) -> dict[str, Any]:
    """The ``charges`` of the usage document; the statement is built from the same lines."""
    overage_cents = sum(line.cents for line in overage_lines(plan, calls_used, records_used))
    base = base_cents(plan)
    cap = cap_cents(plan, spend_cap)
    return {
        "currency": currency,
        "base": money(base),
        "overage": money(overage_cents),
        "total": money(base + overage_cents),
        "spend_cap": money(cap) if cap is not None else None,
    }


def usage_document(
    config: Config,
    customer: str,
    plan_name: str,
    period: Period,
    usage: Usage,
    *,
    spend_cap: Decimal | None = None,
) -> dict[str, Any]:
    """``plan_name`` is the plan in force at the period's end; ``spend_cap`` the customer's own cap."""
    plan = config.plans[plan_name]
    calls, records = meters(plan)
    return {
        "customer": customer,
        "plan": plan_name,
        "period": {"start": rfc3339(period.start), "end": rfc3339(period.end)},
        "calls": _meter(usage.calls, calls),
        "records": _meter(usage.records, records),
        "charges": charges(config.currency, plan, usage.calls, usage.records, spend_cap),
        "rejected": {reason: usage.rejected.get(reason, 0) for reason in ("rate_limited", "quota", "spend_cap")},
        "replays": usage.replays,  # idempotent retries served again, not billed
        "unmetered": usage.unmetered,  # served while the store was away and not kept (docs/reliability.md)
        "uncounted": usage.uncounted,  # responses whose records could not be counted (docs/http.md)
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


__all__ = ["Counts", "charges", "daily_document", "usage_document"]
