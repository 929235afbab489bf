"""Overage billing: graduated tiers, rounding per line, spend caps (per plan and per customer),
plan changes mid-period, and statements that add up to the cent with the usage document."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from meterguard import cli
from meterguard.admin import create_admin_app
from meterguard.admin._documents import customer_statement, customer_usage, statement_document
from meterguard.billing import cap_cents, meters, overage_lines, spend_cents, tier_lines
from meterguard.config import Config, parse_config
from meterguard.customers import Directory, plan_at
from meterguard.errors import ConfigError
from meterguard.periods import period_named
from meterguard.store.base import AdmitRequest, CustomerRecord, Meter, Usage
from meterguard.store.memory import MemoryStore
from meterguard.usage import usage_document

X_PRO = """\
version: 1
currency: USD
plans:
  pro:                                   # a tier like X's Pro
    price: "5000.00"
    quotas: {calls: 5000000, records: 1000000}
    overage:
      records: {unit: 1000, price: "5.00"}
      spend_cap: "2500.00"
  volume:
    price: "100.00"
    quotas: {calls: 1000, records: 1000}
    overage:
      calls: {unit: 1, price: "0.015"}
      records:
        unit: 1000
        tiers:
          - {up_to: 10000, price: "5.00"}
          - {up_to: 100000, price: "4.00"}
          - {up_to: null, price: "2.50"}
  basic:
    price: "200.00"
    quotas: {calls: 100, records: 15000}
"""

NOV = period_named("2026-11")


def cfg() -> Config:
    return parse_config(X_PRO)


# ------------------------------------------------------------------------------------------------
# tiers and rounding
# ------------------------------------------------------------------------------------------------


def test_graduated_tiers_price_only_the_units_inside_each_tier() -> None:
    _, records = meters(cfg().plans["volume"])
    assert records.tiers == ((10_000, 5_000_000), (100_000, 4_000_000), (None, 2_500_000))
    assert records.price_micros == 5_000_000 and records.unit == 1000  # what the Lua reads today
    lines = tier_lines(150_000, records)
    assert [(line.tier, line.units, line.cents) for line in lines] == [(1, 10_000, 5000), (2, 90_000, 36000),
                                                                      (3, 50_000, 12500)]  # fmt: skip
    assert [line.tier for line in tier_lines(10_000, records)] == [1]  # tier 2 is not reached
    assert [(line.tier, line.units) for line in tier_lines(10_001, records)] == [(1, 10_000), (2, 1)]
    assert [(line.tier, line.units, line.cents) for line in tier_lines(0, records)] == [(1, 0, 0)]


def test_rounding_is_half_up_per_line() -> None:
    # 0.015 per call: 1 call is 1.5 cents -> 2; 3 calls 4.5 -> 5
    calls = Meter(0, 1, 15_000)
    assert [spend_cents(n, 0, calls, Meter(None)) for n in (1, 2, 3)] == [2, 3, 5]
    # two tiers each rounding up on its own: 1 unit at 0.005 (0.5 -> 1 cent) twice
    tiered = Meter(0, 1, 5_000, ((1, 5_000), (None, 5_000)))
    assert [line.cents for line in tier_lines(2, tiered)] == [1, 1]
    assert spend_cents(0, 2, Meter(None), tiered) == 2  # the sum of the lines, not 1 (= round(1.0))


def test_a_flat_meter_built_without_tiers_is_one_open_tier() -> None:
    assert Meter(5, 1000, 1_000_000).tiers == ((None, 1_000_000),)
    assert Meter(5).tiers == () and not Meter(5).billed


def test_tier_validation_names_file_line_and_field() -> None:
    bad = """\
version: 1
plans:
  pro:
    quotas: {calls: 10, records: 100}
    overage:
      calls: {unit: 1000, price: "1.00", tiers: [{up_to: null, price: "1"}]}
      records:
        unit: 1000
        tiers:
          - {up_to: 1000, price: "5.00"}
          - {up_to: 1000, price: 4.5}
          - {up_to: null, price: "4.00"}
          - {up_to: 5000, price: "4.00"}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(bad, source="plans.yaml")
    # schema problems first (as for every section); the tiers' order once the schema holds
    assert [str(issue) for issue in caught.value.issues] == [
        "plans.yaml:11: plans.pro.overage.records.tiers.1.price: write money as a quoted decimal string, "
        'e.g. "5.00" (floats lose cents)',
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config(bad.replace("price: 4.5", 'price: "4.5"'), source="plans.yaml")
    assert [str(issue) for issue in caught.value.issues] == [
        "plans.yaml:6: plans.pro.overage.calls: give either price (one price per unit) or tiers (graduated), "
        "not both or neither",
        "plans.yaml:11: plans.pro.overage.records.tiers.1.up_to: up_to must be greater than the previous tier's (1000)",
        "plans.yaml:12: plans.pro.overage.records.tiers.2.up_to: only the last tier may be open-ended (up_to: null)",
        "plans.yaml:13: plans.pro.overage.records.tiers.3.up_to: the last tier must be open-ended: up_to: null",
    ]


# ------------------------------------------------------------------------------------------------
# the worked example of docs/billing.md
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "lines", "total"),
    [
        (900_000, [("0", "0.00")], "5000.00"),
        (1_000_001, [("1", "0.01")], "5000.01"),  # 1 record = 0.005 -> 0.01
        (1_250_000, [("250000", "1250.00")], "6250.00"),
        (1_500_000, [("500000", "2500.00")], "7500.00"),  # the cap: the next request gets 402
    ],
)
def test_x_pro_worked_example(records: int, lines: list[tuple[str, str]], total: str) -> None:
    config = cfg()
    record = CustomerRecord("acme", "pro")
    statement = statement_document(config, record, NOV, Usage(calls=10, records=records))
    assert [(str(line["units"]), line["amount"]) for line in statement["lines"]] == lines
    assert statement["total"] == total and statement["spend_cap"] == "2500.00"


# ------------------------------------------------------------------------------------------------
# statements and usage documents agree, to the cent, for random plans and usage
# ------------------------------------------------------------------------------------------------


def _random_price(rng: random.Random) -> str:
    return str(Decimal(rng.randint(1, 999_999)) / Decimal(10) ** rng.choice([0, 2, 3, 6]))


def _random_meter_yaml(rng: random.Random) -> str:
    unit = rng.choice([1, 10, 1000])
    if rng.random() < 0.5:
        return f'{{unit: {unit}, price: "{_random_price(rng)}"}}'
    bounds = sorted(rng.sample(range(1, 5000), rng.randint(1, 4)))
    tiers = [f'{{up_to: {b}, price: "{_random_price(rng)}"}}' for b in bounds]
    tiers.append(f'{{up_to: null, price: "{_random_price(rng)}"}}')
    return f"{{unit: {unit}, tiers: [{', '.join(tiers)}]}}"


def _random_config(rng: random.Random) -> str:
    cap = f'\n      spend_cap: "{rng.randint(0, 100_000) / 100:.2f}"' if rng.random() < 0.5 else ""
    return f"""\
version: 1
plans:
  p:
    price: "{rng.randint(0, 10**6) / 100:.2f}"
    quotas: {{calls: {rng.randint(0, 2000)}, records: {rng.randint(0, 5000)}}}
    overage:
      calls: {_random_meter_yaml(rng)}
      records: {_random_meter_yaml(rng)}{cap}
"""


def _by_hand(plan_yaml_meter: Meter, used: int) -> Decimal:
    """Decimal arithmetic, independent of billing.py's integers: each tier's amount, half-up."""
    if plan_yaml_meter.included is None or used <= plan_yaml_meter.included:
        return Decimal(0)
    over = used - plan_yaml_meter.included
    total, start = Decimal(0), 0
    for up_to, micros in plan_yaml_meter.tiers:
        end = over if up_to is None else min(over, up_to)
        if end > start:
            amount = Decimal(end - start) * (Decimal(micros) / 10**6) / plan_yaml_meter.unit
            total += amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        if up_to is None or over <= up_to:
            break
        start = up_to
    return total


def test_statements_equal_usage_charges_and_hand_computation_for_random_usage() -> None:
    rng = random.Random(20261101)
    for _ in range(300):
        config = parse_config(_random_config(rng))
        plan = config.plans["p"]
        calls_meter, records_meter = meters(plan)
        usage = Usage(calls=rng.randint(0, 10_000), records=rng.randint(0, 20_000))
        own_cap = Decimal(rng.randint(0, 5000)) if rng.random() < 0.3 else None
        record = CustomerRecord("c", "p", spend_cap=own_cap)
        statement = statement_document(config, record, NOV, usage)
        charges = usage_document(config, "c", "p", NOV, usage, spend_cap=own_cap)["charges"]

        lines = sum(Decimal(line["amount"]) for line in statement["lines"])
        assert Decimal(statement["base"]) + lines == Decimal(statement["total"])
        assert Decimal(statement["overage"]) == lines
        for name in ("base", "overage", "total", "spend_cap"):
            assert statement[name] == charges[name]
        assert statement["currency"] == charges["currency"]
        hand = _by_hand(calls_meter, usage.calls) + _by_hand(records_meter, usage.records)
        assert Decimal(statement["overage"]) == hand
        assert hand * 100 == spend_cents(usage.calls, usage.records, calls_meter, records_meter)
        for line in statement["lines"]:
            assert line["amount"] == f"{Decimal(line['amount']):.2f}"


async def test_the_spend_cap_refuses_exactly_from_the_cap_on_and_statements_agree() -> None:
    """Drive the memory store with random tiered/flat prices and caps (plan or customer)."""
    rng = random.Random(7)
    for round_ in range(40):
        config = parse_config(_random_config(rng))
        plan = config.plans["p"]
        own_cap = Decimal(rng.randint(1, 300)) if rng.random() < 0.5 else None
        cap = cap_cents(plan, own_cap)
        calls, records = meters(plan)
        store = MemoryStore()
        customer = f"c{round_}"
        last_spend, refused = -1, None
        for _ in range(3000):
            decision = await store.admit(
                AdmitRequest(
                    customer,
                    "k",
                    "GET /",
                    True,
                    rng.randint(1, 3),
                    (),
                    "fixed",
                    NOV.id,
                    NOV.end_ts,
                    calls,
                    records,
                    cap,
                    "2026-11-02",
                )  # fmt: skip
            )
            assert decision.spend_cents >= last_spend
            last_spend = decision.spend_cents
            if not decision.admitted:
                refused = decision
                break
            if rng.random() < 0.5:
                from meterguard.store.base import Settlement

                await store.settle(Settlement(customer, "k", "GET /", True, NOV.id, NOV.end_ts, rng.randint(0, 40),
                                              "2026-11-02"))  # fmt: skip
        usage = await store.usage(customer, NOV.id)
        spend = spend_cents(usage.calls, usage.records, calls, records)
        if refused is not None:
            assert refused.reason == "spend_cap" and cap is not None and spend >= cap
        elif cap is not None:
            assert spend < cap or usage.calls == 0
        record = CustomerRecord(customer, "p", spend_cap=own_cap)
        statement = statement_document(config, record, NOV, usage)
        charges = usage_document(config, customer, "p", NOV, usage, spend_cap=own_cap)["charges"]
        assert (statement["overage"], statement["total"], statement["spend_cap"]) == (
            charges["overage"],
            charges["total"],
            charges["spend_cap"],
        )
        assert Decimal(statement["overage"]) * 100 == spend


def test_overage_lines_list_calls_tiers_then_records_tiers() -> None:
    lines = overage_lines(cfg().plans["volume"], 1003, 1000 + 20_000)
    assert [(line.meter, line.tier, line.units, line.cents) for line in lines] == [
        ("calls", 1, 3, 5),  # 3 x 0.015 = 0.045 -> 0.05
        ("records", 1, 10_000, 5000),
        ("records", 2, 10_000, 4000),
    ]


# ------------------------------------------------------------------------------------------------
# per-customer caps and plan changes
# ------------------------------------------------------------------------------------------------


async def test_plan_changes_statement_uses_the_plan_in_force_at_period_end() -> None:
    now = [NOV.start.timestamp() + 86400]
    store = MemoryStore()
    directory = Directory(cfg(), store, clock=lambda: now[0])
    record = await directory.create("acme", "basic")
    assert record.plan_history == ()
    now[0] += 10 * 86400  # Nov 11
    record = await directory.update("acme", plan="pro")
    assert [plan for _, plan in record.plan_history] == ["basic", "pro"]
    now[0] = period_named("2026-12").start.timestamp() + 5 * 86400  # Dec 6: back to basic
    record = await directory.update("acme", plan="basic")
    assert plan_at(record, NOV.end.timestamp()) == "pro"
    assert plan_at(record, period_named("2026-10").end.timestamp()) == "basic"  # before any change
    assert plan_at(record, period_named("2026-12").end.timestamp()) == "basic"

    november = await customer_statement(cfg(), store, record, "2026-11", now[0])
    assert (november["plan"], november["base"]) == ("pro", "5000.00")  # no proration
    assert (await customer_usage(cfg(), store, record, "2026-11", now[0]))["charges"]["total"] == november["total"]
    december = await customer_statement(cfg(), store, record, "2026-12", now[0])
    assert (december["plan"], december["base"]) == ("basic", "200.00")

    events = await store.read_events("acme", "audit", "t", 10)
    assert [(fields["type"], fields["plan"], fields["previous"]) for _, fields in events] == [
        ("plan", "pro", "basic"),
        ("plan", "basic", "pro"),
    ]
    assert all(fields["v"] == "1" and fields["customer"] == "acme" for _, fields in events)


async def test_customer_spend_cap_through_the_admin_api() -> None:
    store = MemoryStore()
    app = create_admin_app(cfg(), store, token="t0ken", clock=time.time)
    headers = {"Authorization": "Bearer t0ken"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        assert (await client.post("/customers", json={"id": "acme", "plan": "pro"}, headers=headers)).status_code == 201
        response = await client.patch("/customers/acme", json={"spend_cap": "1000.00"}, headers=headers)
        assert response.status_code == 200 and response.json()["spend_cap"] == "1000.00"
        usage = (await client.get("/customers/acme/usage", headers=headers)).json()
        assert usage["charges"]["spend_cap"] == "1000.00"
        statement = (await client.get("/customers/acme/statement", headers=headers)).json()
        assert statement["spend_cap"] == "1000.00"
        for bad in (1000, "1e400x", "-1", "1.001", True):
            response = await client.patch("/customers/acme", json={"spend_cap": bad}, headers=headers)
            assert response.status_code == 422, bad
            assert response.json()["errors"][0]["field"] == "spend_cap"
        response = await client.patch("/customers/acme", json={"spend_cap": None}, headers=headers)
        assert response.json()["spend_cap"] is None
        usage = (await client.get("/customers/acme/usage", headers=headers)).json()
        assert usage["charges"]["spend_cap"] == "2500.00"  # the plan's again
    record = await store.get_customer("acme")
    assert record is not None and cap_cents(cfg().plans["pro"], record.spend_cap) == 250_000


def test_customer_spend_cap_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(X_PRO)
    store = MemoryStore()
    monkeypatch.setattr(cli, "_open_store", lambda url: store)
    runner = CliRunner()
    opts = ["--config", str(plans), "--store", "memory://"]
    assert runner.invoke(cli.main, ["customers", "create", "acme", "--plan", "pro", *opts]).exit_code == 0
    result = runner.invoke(cli.main, ["customers", "set", "acme", "--spend-cap", "1000.00", *opts])
    assert result.exit_code == 0 and "spend cap 1000.00" in result.stdout
    result = runner.invoke(cli.main, ["usage", "acme", "--json", *opts])
    assert '"spend_cap": "1000.00"' in result.stdout
    result = runner.invoke(cli.main, ["customers", "set", "acme", "--spend-cap", "lots", *opts])
    assert result.exit_code == 2 and "--spend-cap" in result.output
    result = runner.invoke(cli.main, ["customers", "set", "acme", "--spend-cap", "none", *opts])
    assert result.exit_code == 0 and "spend cap" not in result.stdout
    result = runner.invoke(cli.main, ["check", str(plans)])
    assert "records per 1,000 over, graduated (0-10,000: 5.00; 10,000-100,000: 4.00; 100,000-: 2.50 USD)" in (
        result.stdout
    )


def test_tiered_statement_formats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(X_PRO)
    store = MemoryStore()
    monkeypatch.setattr(cli, "_open_store", lambda url: store)
    runner = CliRunner()
    opts = ["--config", str(plans), "--store", "memory://", "--period", "2026-11"]
    assert runner.invoke(cli.main, ["customers", "create", "acme", "--plan", "volume", *opts[:4]]).exit_code == 0
    store._periods[("acme", "2026-11")].calls = 1003
    store._periods[("acme", "2026-11")].records = 21_000
    csv_rows = runner.invoke(cli.main, ["statement", "acme", "--format", "csv", *opts]).stdout.splitlines()
    assert [row.split(",")[3] for row in csv_rows[1:]] == [
        "base",
        "overage:calls",
        "overage:records:tier-1",
        "overage:records:tier-2",
        "total",
    ]
    assert csv_rows[-1].endswith(",total,,,,,,190.05,USD")  # 100.00 + 0.05 + 50.00 + 40.00
    markdown = runner.invoke(cli.main, ["statement", "acme", *opts]).stdout
    assert "| records overage, tier 2 | 1,000 | 21,000 | 10,000 | 1,000 | 4.00 | 40.00 |" in markdown


def test_unknown_plan_in_history_is_reported(unique_customer: Callable[[str], str]) -> None:
    record = CustomerRecord("acme", "pro", plan_history=((0.0, "gone"), (NOV.end.timestamp() + 1, "pro")))
    from meterguard.errors import PlanNotFound

    with pytest.raises(PlanNotFound, match="'gone'"):
        statement_document(cfg(), record, NOV, Usage())
