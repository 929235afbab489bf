"""``meterguard customers create``, ``list`` and ``set``: the customers of a store and a plans file."""

from __future__ import annotations

from decimal import Decimal
from typing import cast

import click

from .admin._documents import CUSTOMER_ID, customer_json
from .billing import parse_amount
from .cli import State, _errors, _json, _read_options, _state_options, _table, main
from .customers import KEEP, Keep
from .store.base import CustomerStatus


@main.group()
def customers() -> None:
    """Create, list and change customers."""


JSON_HELP = "JSON on stdout (the admin API's document) instead of text."


@customers.command("create")
@click.argument("customer_id", metavar="ID")
@click.option("--plan", required=True, help="A plan of the plans file.")
@click.option("--anchor-day", type=click.IntRange(1, 31), help="Day of month periods start (anniversary anchor).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@_state_options
def customers_create(
    customer_id: str, plan: str, anchor_day: int | None, as_json: bool, config_path: str, store_url: str | None
) -> None:
    """Create customer ID on plan P."""
    if not CUSTOMER_ID.match(customer_id):
        raise click.BadParameter("1-64 letters, digits, '_', '-' or '.'", param_hint="ID")
    with _errors():
        state = State(config_path, store_url)
        record = state.run(lambda s: s.directory.create(customer_id, plan, anchor_day))
    if as_json:
        _json(customer_json(record))
        return
    click.echo(f"created customer {record.id} on plan {record.plan} (periods start on day {record.anchor_day})")


@customers.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_read_options
def customers_list(as_json: bool, config_path: str | None, store_url: str | None) -> None:
    """List customers (the store's and the plans file's)."""
    with _errors():
        state = State(config_path, store_url)
        records = state.run(lambda s: s.directory.all())
    documents = [customer_json(record) for record in records]
    if as_json:
        _json({"customers": documents})
        return
    rows = [[d["id"], d["plan"], d["status"], d["anchor_day"], d["created"] or "(plans file)"] for d in documents]
    click.echo(_table(["ID", "PLAN", "STATUS", "ANCHOR", "CREATED"], rows))


@customers.command("set")
@click.argument("customer_id", metavar="ID")
@click.option("--plan", help="Move the customer to this plan.")
@click.option("--status", type=click.Choice(["active", "suspended"]), help="Suspend or reactivate.")
@click.option(
    "--spend-cap",
    metavar="AMOUNT|none",
    help="This customer's overage spend cap per period, e.g. 1000.00; 'none' goes back to the plan's.",
)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@_state_options
def customers_set(
    customer_id: str,
    plan: str | None,
    status: str | None,
    spend_cap: str | None,
    as_json: bool,
    config_path: str,
    store_url: str | None,
) -> None:
    """Change a customer's plan, status or spend cap (gateways apply it within a second)."""
    if plan is None and status is None and spend_cap is None:
        raise click.UsageError("give --plan, --status, --spend-cap or several")
    cap: Decimal | None | Keep = KEEP
    if spend_cap is not None:
        if spend_cap.strip().lower() == "none":
            cap = None
        else:
            try:
                cap = parse_amount(spend_cap)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--spend-cap") from None
    with _errors():
        state = State(config_path, store_url)
        new_status = cast("CustomerStatus | None", status)  # click.Choice allows only the two
        record = state.run(lambda s: s.directory.update(customer_id, plan=plan, status=new_status, spend_cap=cap))
    if as_json:
        _json(customer_json(record))
        return
    own_cap = f", spend cap {record.spend_cap}" if record.spend_cap is not None else ""
    click.echo(f"customer {record.id}: plan {record.plan}, {record.status}{own_cap}")
