"""JSON documents of the admin API, shared with the CLI so both say exactly the same thing.

Timestamps are RFC 3339 in UTC; amounts are decimal strings with two decimals (CONTRACT 5).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ..billing import StatementLine, base_cents, cap_cents, money, overage_lines
from ..config import Config
from ..customers import plan_at
from ..errors import PlanNotFound
from ..periods import Period, day_id, period_for, period_named, rfc3339
from ..plans import MeterPrice, Plan, Window
from ..store.base import CustomerRecord, KeyRecord, Store, Usage
from ..usage import daily_document, usage_document

#: The same rule plans.yaml applies to customer ids: they end up inside store keys and hash tags.
CUSTOMER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
# Months 1970-01 to 2999-12: the documented pattern and the check are the same expression.
PERIOD_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])$"
_PERIOD_ID = re.compile(PERIOD_PATTERN)
MAX_DAYS = 90  # as X's usage endpoint: daily usage for up to 90 days


def timestamp(epoch: float | None) -> str | None:
    """RFC 3339 for an epoch, None for "never" (static customers and keys carry 0)."""
    if not epoch:
        return None
    return rfc3339(datetime.fromtimestamp(epoch, UTC))


def price_text(price: Decimal) -> str:
    """A unit price: two decimals, or more where the price has them ($0.005 per post stays exact)."""
    quantized = price.quantize(Decimal("0.01"))
    if quantized == price:
        return str(quantized)
    return format(price.normalize(), "f")


def customer_json(record: CustomerRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "plan": record.plan,
        "status": record.status,
        "anchor_day": record.anchor_day,
        "created": timestamp(record.created_at),
        "spend_cap": money_text(record.spend_cap),  # None: the plan's cap applies
        "plan_history": [{"plan": plan, "since": timestamp(at)} for at, plan in record.plan_history],
    }


def key_json(record: KeyRecord, now: float) -> dict[str, Any]:
    # Never the key nor its hash: the prefix is enough for a person to recognise a key.
    return {
        "key_id": record.key_id,
        "customer": record.customer,
        "prefix": record.prefix,
        "created": timestamp(record.created_at),
        "last_used": timestamp(record.last_used),
        "expires_at": timestamp(record.expires_at),
        "state": record.state(now),  # active, expiring (within 7 days), expired or revoked
        "replaced_by": record.replaced_by,
        "revoked": record.revoked,
    }


def _window(window: Window) -> dict[str, Any]:
    return {"name": window.name, "limit": window.limit, "seconds": window.seconds}


def _meter_price(price: MeterPrice | None) -> dict[str, Any] | None:
    if price is None:
        return None
    if not price.graduated:
        return {"unit": price.unit, "price": price_text(price.price)}
    return {
        "unit": price.unit,
        "tiers": [{"up_to": tier.up_to, "price": price_text(tier.price)} for tier in price.tiers],
    }


def plan_json(plan: Plan) -> dict[str, Any]:
    overage: str | dict[str, Any]
    if plan.overage is None:
        overage = "block"
    else:
        overage = {
            "calls": _meter_price(plan.overage.calls),
            "records": _meter_price(plan.overage.records),
            "spend_cap": money_text(plan.overage.spend_cap),
        }
    return {
        "price": money_text(plan.price),
        "rate_limits": [_window(window) for window in plan.windows],
        "route_limits": {match: [_window(w) for w in windows] for match, windows in plan.route_windows.items()},
        "quotas": {"calls": plan.quotas.calls, "records": plan.quotas.records},
        "overage": overage,
        "alerts": list(plan.alerts),
        "strategy": plan.strategy,
    }


def money_text(amount: Decimal | None) -> str | None:
    if amount is None:
        return None
    return price_text(amount)


def plans_document(config: Config) -> dict[str, Any]:
    return {
        "currency": config.currency,
        "billing": {"anchor": config.anchor},
        "plans": {name: plan_json(plan) for name, plan in config.plans.items()},
        "routes": [
            {
                "match": route.match,
                "weight": route.weight,
                "plans": sorted(route.plans) if route.plans is not None else None,
                "public": route.public,
            }
            for route in config.routes.routes
        ],
    }


def anchor_day(config: Config, record: CustomerRecord) -> int:
    # A calendar anchor means the 1st for everyone, whatever day the customer joined.
    return record.anchor_day if config.anchor == "anniversary" else 1


def resolve_period(config: Config, record: CustomerRecord, period_id: str | None, now: float) -> Period:
    """The named period (raises ValueError when malformed), or the one containing ``now``."""
    anchor = anchor_day(config, record)
    if period_id is None:
        return period_for(now, anchor)
    if not _PERIOD_ID.match(period_id):
        # Stricter than period_named, which lets int() accept "+999" or non-ASCII digits.
        raise ValueError(f"period must be YYYY-MM, not {period_id!r}")
    return period_named(period_id, anchor)


def plan_of(config: Config, record: CustomerRecord, plan_name: str | None = None) -> Plan:
    name = record.plan if plan_name is None else plan_name
    plan = config.plans.get(name)
    if plan is None:
        # A stored customer may name a plan that a later plans.yaml removed.
        raise PlanNotFound(f"customer {record.id!r} is on plan {name!r}, which plans.yaml does not define")
    return plan


async def usage_for(
    config: Config, store: Store, record: CustomerRecord, period_id: str | None, now: float
) -> tuple[Period, str, Usage]:
    """The period, the plan in force at its end (the one it is billed under) and its usage."""
    period = resolve_period(config, record, period_id, now)
    plan_name = plan_at(record, period.end.timestamp())
    plan_of(config, record, plan_name)
    return period, plan_name, await store.usage(record.id, period.id)


async def customer_usage(
    config: Config, store: Store, record: CustomerRecord, period_id: str | None, now: float
) -> dict[str, Any]:
    period, plan_name, usage = await usage_for(config, store, record, period_id, now)
    return usage_document(config, record.id, plan_name, period, usage, spend_cap=record.spend_cap)


def last_days(now: float, days: int) -> list[str]:
    """``days`` day ids ending today (UTC), oldest first."""
    today = datetime.fromtimestamp(now, UTC)
    return [day_id((today - timedelta(days=back)).timestamp()) for back in range(days - 1, -1, -1)]


async def customer_daily(store: Store, customer: str, days: int, now: float) -> dict[str, Any]:
    return daily_document(customer, await store.daily(customer, last_days(now, days)))


def _line(line: StatementLine) -> dict[str, Any]:
    return {
        "meter": line.meter,
        "tier": line.tier,
        "up_to": line.up_to,
        "included": line.included,
        "used": line.used,
        "units": line.units,
        "unit": line.unit,
        "price": price_text(line.price),
        "amount": money(line.cents),
    }


def statement_document(
    config: Config, record: CustomerRecord, period: Period, usage: Usage, plan_name: str | None = None
) -> dict[str, Any]:
    """Base price, one line per overage tier reached, total: the usage document's charges, line for line.

    ``plan_name`` is the plan in force at the period's end (default: the customer's plan); its
    base price and overage terms price the whole period. There is no proration (docs/billing.md).
    """
    name = plan_name or plan_at(record, period.end.timestamp())
    plan = plan_of(config, record, name)
    lines = overage_lines(plan, usage.calls, usage.records)
    base = base_cents(plan)
    overage_cents = sum(line.cents for line in lines)
    cap = cap_cents(plan, record.spend_cap)
    return {
        "customer": record.id,
        "plan": name,
        "period": {"id": period.id, "start": rfc3339(period.start), "end": rfc3339(period.end)},
        "currency": config.currency,
        "base": money(base),
        "lines": [_line(line) for line in lines],
        "overage": money(overage_cents),
        "total": money(base + overage_cents),
        "spend_cap": money(cap) if cap is not None else None,
    }


async def customer_statement(
    config: Config, store: Store, record: CustomerRecord, period_id: str | None, now: float
) -> dict[str, Any]:
    period, plan_name, usage = await usage_for(config, store, record, period_id, now)
    return statement_document(config, record, period, usage, plan_name)


__all__ = [
    "CUSTOMER_ID",
    "MAX_DAYS",
    "customer_daily",
    "customer_json",
    "customer_statement",
    "customer_usage",
    "key_json",
    "last_days",
    "plans_document",
    "resolve_period",
    "statement_document",
    "timestamp",
]
