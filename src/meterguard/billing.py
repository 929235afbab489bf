"""Overage pricing in integer arithmetic. Money is never a float.

A meter's overage is priced by graduated tiers, as Stripe's ``tiers_mode=graduated``: each tier
prices only the overage units that fall within it, ``price x units / unit``, and each tier
reached is one statement line, rounded half-up to the cent on its own. A flat price is the
single open-ended tier, so there is one code path. The spend of a period is the sum of its
lines' cents, which is what the usage document, the statement and the spend-cap check all
read. Prices are held in millionths of the currency (``price_micros``) so that fractional-cent
unit prices such as X's $0.005 per post stay exact; the Lua scripts repeat the same integer
formula so every backend bills the same cent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from .plans import MICROS, MeterPrice, Plan
from .store.base import Meter

MICROS_PER_CENT = MICROS // 100


def line_cents(over_units: int, unit: int, price_micros: int) -> int:
    """Charge for ``over_units`` at one price, in cents, rounded half-up."""
    if over_units <= 0 or unit <= 0:
        return 0
    denominator = unit * MICROS_PER_CENT
    return (2 * over_units * price_micros + denominator) // (2 * denominator)


def over(used: int, meter: Meter) -> int:
    """Overage units: those past the included quota, on a billed meter."""
    if meter.included is None or not meter.billed:
        return 0
    return max(0, used - meter.included)


@dataclass(frozen=True, slots=True)
class TierLine:
    """The overage units of one meter that fall in one tier, and their charge."""

    tier: int  # from 1
    up_to: int | None  # the tier's end in cumulative overage units; None: open-ended
    units: int
    price_micros: int  # per meter unit
    cents: int

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_micros) / MICROS


def tier_lines(over_units: int, meter: Meter) -> list[TierLine]:
    """One line per tier reached by ``over_units`` overage units (graduated, half-up per line).

    A billed meter always has its first line, even at 0 units, so that a statement lists the
    price of every billed meter; a later tier appears once at least one unit falls in it.
    """
    if not meter.billed:
        return []
    lines: list[TierLine] = []
    start = 0
    for index, (up_to, price_micros) in enumerate(meter.tiers, 1):
        end = over_units if up_to is None else min(over_units, up_to)
        units = max(0, end - start)
        if units > 0 or index == 1:
            lines.append(TierLine(index, up_to, units, price_micros, line_cents(units, meter.unit, price_micros)))
        if up_to is None or over_units <= up_to:
            break
        start = up_to
    return lines


def meter_cents(used: int, meter: Meter) -> int:
    """The overage charge of one meter: the sum of its tier lines, each already rounded."""
    return sum(line.cents for line in tier_lines(over(used, meter), meter))


def spend_cents(calls_used: int, records_used: int, calls: Meter, records: Meter) -> int:
    """Overage spend of a period, as the spend-cap check compares it with the cap."""
    return meter_cents(calls_used, calls) + meter_cents(records_used, records)


def _meter(included: int | None, price: MeterPrice | None) -> Meter:
    if price is None:
        return Meter(included)
    tiers = tuple((tier.up_to, tier.price_micros) for tier in price.tiers)
    return Meter(included, price.unit, tiers[0][1], tiers)


def meters(plan: Plan) -> tuple[Meter, Meter]:
    """The calls and records meters of a plan, as the store's decisions need them."""
    overage = plan.overage
    return (
        _meter(plan.quotas.calls, overage.calls if overage is not None else None),
        _meter(plan.quotas.records, overage.records if overage is not None else None),
    )


def effective_cap(plan: Plan, customer_cap: Decimal | None = None) -> Decimal | None:
    """The spend cap that applies: the customer's own when set, else the plan's (None: no cap)."""
    if customer_cap is not None:
        return customer_cap
    return plan.overage.spend_cap if plan.overage is not None else None


def to_cents(amount: Decimal) -> int:
    return int((amount * 100).to_integral_value(ROUND_HALF_UP))


def cap_cents(plan: Plan, customer_cap: Decimal | None = None) -> int | None:
    """The effective spend cap in cents, as ``AdmitRequest.spend_cap_cents`` takes it."""
    cap = effective_cap(plan, customer_cap)
    return None if cap is None else to_cents(cap)


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One overage line of a statement: one tier of one meter."""

    meter: str  # "calls" | "records"
    tier: int
    up_to: int | None
    included: int | None
    used: int
    units: int
    unit: int
    price: Decimal  # per ``unit``
    cents: int


def overage_lines(plan: Plan, calls_used: int, records_used: int) -> list[StatementLine]:
    """Every overage line of a period under ``plan``: calls tiers, then records tiers."""
    lines: list[StatementLine] = []
    for name, used, meter in zip(("calls", "records"), (calls_used, records_used), meters(plan), strict=True):
        for line in tier_lines(over(used, meter), meter):
            lines.append(
                StatementLine(
                    name, line.tier, line.up_to, meter.included, used, line.units, meter.unit, line.price, line.cents
                )
            )
    return lines


#: A money amount as written by hand: digits, optionally a point and more digits. Decimal() also
#: reads "1e30", "NaN", "Infinity", "+5" and "1_000"; none of those is a price anyone means.
PLAIN_AMOUNT = re.compile(r"[0-9]+(\.[0-9]+)?\Z")
#: Amounts stay below 10^9 so that a price in millionths (plans.MICROS) stays below 2^53: the Lua
#: scripts count in doubles, and statements multiply prices by units.
MAX_AMOUNT = Decimal(10**9)


def decimal_amount(value: str, places: int) -> Decimal:
    """``value`` as a Decimal: plain digits, >= 0, below MAX_AMOUNT, at most ``places`` decimals; else ValueError."""
    text = value.strip()
    try:
        amount = Decimal(text)
    except ArithmeticError:
        raise ValueError(f"{value!r} is not a decimal amount") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{value!r} must be a finite amount >= 0")
    if not PLAIN_AMOUNT.match(text):
        raise ValueError(f'{value!r} is not a plain decimal amount: write digits and a point, e.g. "1000.00"')
    if amount >= MAX_AMOUNT:
        raise ValueError(f"{value!r} is too large: amounts are below {MAX_AMOUNT:,}")
    if amount.as_tuple().exponent < -places:  # type: ignore[operator]
        raise ValueError(f"{value!r} has more than {places} decimal places")
    return amount


def parse_amount(text: str) -> Decimal:
    """A money amount a user typed (``"1000.00"``): plain digits, >= 0, at most two decimals; else ValueError."""
    return decimal_amount(text, 2)


def base_cents(plan: Plan) -> int:
    return to_cents(plan.price)


def money(cents: int) -> str:
    """Cents as a JSON amount: a string with two decimals."""
    return str((Decimal(cents) / 100).quantize(Decimal("0.01")))
