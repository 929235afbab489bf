"""Overage pricing in integer arithmetic. Money is never a float.

A meter's overage charge is ``price x units / unit``, rounded half-up to the cent per
statement line. Prices are held in millionths of the currency (``price_micros``) so that
fractional-cent unit prices such as X's $0.005 per post stay exact; the Lua scripts repeat
the same integer formula so every backend bills the same cent.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from .plans import MICROS, Plan
from .store.base import Meter

MICROS_PER_CENT = MICROS // 100


def line_cents(over_units: int, unit: int, price_micros: int) -> int:
    """Charge for ``over_units`` past the quota, in cents, rounded half-up."""
    if over_units <= 0 or unit <= 0:
        return 0
    denominator = unit * MICROS_PER_CENT
    return (2 * over_units * price_micros + denominator) // (2 * denominator)


def over(used: int, meter: Meter) -> int:
    if meter.included is None or not meter.billed:
        return 0
    return max(0, used - meter.included)


def spend_cents(calls_used: int, records_used: int, calls: Meter, records: Meter) -> int:
    return line_cents(over(calls_used, calls), calls.unit, calls.price_micros) + line_cents(
        over(records_used, records), records.unit, records.price_micros
    )


def meters(plan: Plan) -> tuple[Meter, Meter]:
    """The calls and records meters of a plan, as the store's decisions need them."""
    overage = plan.overage
    calls_price = overage.calls if overage is not None else None
    records_price = overage.records if overage is not None else None
    calls = (
        Meter(plan.quotas.calls, calls_price.unit, calls_price.price_micros)
        if calls_price
        else Meter(plan.quotas.calls)
    )
    records = (
        Meter(plan.quotas.records, records_price.unit, records_price.price_micros)
        if records_price
        else Meter(plan.quotas.records)
    )
    return calls, records


def cap_cents(plan: Plan) -> int | None:
    if plan.overage is None or plan.overage.spend_cap is None:
        return None
    return int((plan.overage.spend_cap * 100).to_integral_value(ROUND_HALF_UP))


def money(cents: int) -> str:
    """Cents as a JSON amount: a string with two decimals."""
    return str((Decimal(cents) / 100).quantize(Decimal("0.01")))


def decimal_money(amount: Decimal) -> str:
    return str(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
