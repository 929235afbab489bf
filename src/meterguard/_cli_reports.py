"""``meterguard usage``, ``statement`` and ``export``: what customers used and owe."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import click

from . import export as export_module
from .admin._documents import anchor_day, customer_statement, customer_usage, resolve_period
from .cli import State, _errors, _read_options, _state_options, _table, main
from .config import Config
from .errors import MeterGuardError
from .periods import period_for
from .store.base import CustomerRecord, Store

# ----------------------------------------------------------------------------------------------
# usage and statements
# ----------------------------------------------------------------------------------------------


PERIOD_HELP = (
    "The billing period: YYYY-MM (the one that starts in that month), 'current' (the default) "
    "or 'previous' (the last one that ended: what an invoice run wants)."
)


def _period_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--period", metavar="YYYY-MM|current|previous", help=PERIOD_HELP)(command)


def _period_id(config: Config, record: CustomerRecord, period: str | None, now: float) -> str | None:
    """``current``/None -> None (the period containing now); ``previous`` -> the one before it."""
    if period is None or period == "current":
        return None
    if period == "previous":
        # The day before the current period starts lies in the previous one, whatever the anchor.
        current = resolve_period(config, record, None, now)
        return period_for(current.start_ts - 1, anchor_day(config, record)).id
    return period


def _fetch(
    state: State,
    customer: str,
    period: str | None,
    build: Callable[[Config, Store, Any, str | None, float], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    async def work(s: State) -> dict[str, Any]:
        record = await s.directory.require(customer)
        now = time.time()
        return await build(s.config, s.store, record, _period_id(s.config, record, period, now), now)

    try:
        return state.run(work)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--period") from None


def _format_usage(doc: dict[str, Any]) -> str:
    period = doc["period"]
    lines = [
        f"customer {doc['customer']}  plan {doc['plan']}  period {period['start']} .. {period['end']}",
        "",
        _table(
            ["METER", "USED", "INCLUDED", "REMAINING", "OVERAGE"],
            [
                [
                    meter,
                    f"{doc[meter]['used']:,}",
                    _num(doc[meter]["included"]),
                    _num(doc[meter]["remaining"]),
                    f"{doc[meter]['overage']:,}",
                ]
                for meter in ("calls", "records")
            ],
        ),
        "",
    ]
    charges = doc["charges"]
    cap = f"  (spend cap {charges['spend_cap']})" if charges["spend_cap"] is not None else ""
    total = f"{charges['total']} {charges['currency']}"
    lines.append(f"charges: base {charges['base']} + overage {charges['overage']} = {total}{cap}")
    rejected = doc["rejected"]
    lines.append("rejected: " + ", ".join(f"{reason} {count:,}" for reason, count in rejected.items()))
    for title, table in (("ROUTE", doc["by_route"]), ("KEY", doc["by_key"])):
        if table:
            lines += [
                "",
                _table(
                    [title, "CALLS", "RECORDS"],
                    [[name, f"{c['calls']:,}", f"{c['records']:,}"] for name, c in table.items()],
                ),
            ]
    return "\n".join(lines)


def _num(value: int | None) -> str:
    return "unlimited" if value is None else f"{value:,}"


@main.command()
@click.argument("customer")
@_period_option
@click.option("--json", "as_json", is_flag=True, help="The usage document of the admin API.")
@_state_options
def usage(customer: str, period: str | None, as_json: bool, config_path: str, store_url: str | None) -> None:
    """A customer's usage in a billing period."""
    with _errors():
        document = _fetch(State(config_path, store_url), customer, period, customer_usage)
    click.echo(json.dumps(document, indent=2) if as_json else _format_usage(document))


def _tier_label(line: dict[str, Any], prefix: str) -> str:
    # A flat price is one open-ended tier: no label, so flat statements read as they always have.
    if line["tier"] == 1 and line["up_to"] is None:
        return ""
    return f"{prefix}{line['tier']}"


def _statement_rows(doc: dict[str, Any]) -> list[list[str]]:
    rows = [[f"base price (plan {doc['plan']})", "", "", "", "", "", doc["base"]]]
    for line in doc["lines"]:
        rows.append(
            [
                f"{line['meter']} overage{_tier_label(line, ', tier ')}",
                _num(line["included"]),
                f"{line['used']:,}",
                f"{line['units']:,}",
                f"{line['unit']:,}",
                line["price"],
                line["amount"],
            ]
        )
    return rows


def _statement_md(doc: dict[str, Any]) -> str:
    period = doc["period"]
    lines = [
        f"# Statement: {doc['customer']}, {period['id']}",
        "",
        f"Plan **{doc['plan']}**, period {period['start']} to {period['end']} (amounts in {doc['currency']}).",
        "",
        "| item | included | used | billable units | per | price | amount |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _statement_rows(doc)]
    lines.append(f"| **total** | | | | | | **{doc['total']}** |")
    if doc["spend_cap"] is not None:
        lines += ["", f"Overage spend cap: {doc['spend_cap']} {doc['currency']} per period."]
    return "\n".join(lines)


def _statement_csv(doc: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["customer", "plan", "period", "item", "included", "used", "units", "unit", "price", "amount", "currency"]
    )
    prefix = [doc["customer"], doc["plan"], doc["period"]["id"]]
    writer.writerow([*prefix, "base", "", "", "", "", "", doc["base"], doc["currency"]])
    for line in doc["lines"]:
        writer.writerow(
            [
                *prefix,
                f"overage:{line['meter']}{_tier_label(line, ':tier-')}",
                "" if line["included"] is None else line["included"],
                line["used"],
                line["units"],
                line["unit"],
                line["price"],
                line["amount"],
                doc["currency"],
            ]
        )
    writer.writerow([*prefix, "total", "", "", "", "", "", doc["total"], doc["currency"]])
    return out.getvalue().rstrip("\n")


@main.command()
@click.argument("customer")
@_period_option
@click.option("--format", "fmt", type=click.Choice(["md", "json", "csv"]), help="md (the default), json or csv.")
@click.option("--json", "as_json", is_flag=True, help="The statement document of the admin API (--format json).")
@_state_options
def statement(
    customer: str, period: str | None, fmt: str | None, as_json: bool, config_path: str, store_url: str | None
) -> None:
    """A customer's statement for a period (default: the current one): base price, overage lines, total."""
    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json and --format {fmt} disagree: give one")
    fmt = "json" if as_json else fmt or "md"
    with _errors():
        document = _fetch(State(config_path, store_url), customer, period, customer_statement)
    if fmt == "json":
        click.echo(json.dumps(document, indent=2))
    elif fmt == "csv":
        click.echo(_statement_csv(document))
    else:
        click.echo(_statement_md(document))


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------


def _is_terminal(stream: Any) -> bool:
    # A seam for tests (CliRunner's streams are never terminals).
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def _progress(customers: int, output: str | None) -> Iterator[export_module.Progress | None]:
    """click's progress bar on stderr, on a terminal only; silent in a pipe, a log or cron.

    Not when the events themselves go to a terminal's stdout: the bar would be torn by them.
    """
    if not _is_terminal(sys.stderr) or (output is None and _is_terminal(sys.stdout)):
        yield None
        return

    def show(events: int | None) -> str | None:
        return None if events is None else f"{events:,} events"

    with click.progressbar(
        length=customers, label="exporting", file=sys.stderr, show_pos=True, item_show_func=show
    ) as bar:

        def progress(done: int, events: int) -> None:
            bar.update(done - bar.pos, events)

        yield progress


@main.command()
@click.option("--since", metavar="YYYY-MM-DD|RFC3339", help="Only events at or after this time (older: skipped).")
@click.option(
    "--replay",
    metavar="YYYY-MM-DD|RFC3339",
    help="Write every event still kept from this time on, again, past every consumer group (moves none).",
)
@click.option("--format", "fmt", type=click.Choice(list(export_module.FORMATS)), default="jsonl", show_default=True)
@click.option(
    "--output", "-o", metavar="FILE", help="Append to FILE, skipping events it already holds (default stdout)."
)
@click.option(
    "--group",
    metavar="NAME",
    help="The consumer group: each group gets every event once (default: one per output file, one per format "
    "on stdout).",
)
@click.option("--customer", "customer_ids", multiple=True, metavar="ID", help="Only this customer (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="A JSON summary (on stdout with -o, else on stderr).")
@_read_options
def export(
    since: str | None,
    replay: str | None,
    fmt: str,
    output: str | None,
    group: str | None,
    customer_ids: tuple[str, ...],
    as_json: bool,
    config_path: str | None,
    store_url: str | None,
) -> None:
    """Usage and billing events, each exactly once per output file (jsonl, csv or Stripe meter events)."""
    if replay is not None and (since is not None or group is not None):
        raise click.UsageError("--replay reads past every consumer group: it takes neither --since nor --group")
    moment = None
    for option, text in (("--since", since), ("--replay", replay)):
        if text is not None:
            try:
                moment = export_module.parse_since(text)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=option) from None
    chosen = cast("export_module.Format", fmt)  # click.Choice allows only FORMATS
    if group is not None and not group.strip():
        raise click.BadParameter("a group needs a name", param_hint="--group")
    group_name = group or export_module.default_group(output, chosen)
    with _errors():
        state = State(config_path, store_url)
        if not state.has_plans and not customer_ids:
            click.echo(
                "note: without --config, customers written only in plans.yaml are not exported "
                "(give --config, or --customer ID)",
                err=True,
            )

        async def work(s: State) -> export_module.ExportResult:
            ids = list(customer_ids) or [record.id for record in await s.directory.all()]
            try:
                sink = export_module.open_sink(output, chosen)
            except OSError as exc:
                raise MeterGuardError(f"cannot open {output}: {exc.strerror}") from None
            try:
                with _progress(len(ids), output) as progress:
                    if replay is not None:
                        assert moment is not None
                        return await export_module.replay_events(s.store, ids, sink, since=moment, progress=progress)
                    return await export_module.export_events(
                        s.store, ids, sink, since=moment, group=group_name, progress=progress
                    )
            finally:
                sink.close()

        result = state.run(work)
    if as_json:
        # On stdout unless the events are there: a script reads one JSON document, not events and a summary.
        click.echo(json.dumps(result.as_json(), indent=2), err=output is None)
        return
    skipped = f"{result.before_since} before --replay" if replay else f"{result.before_since} before --since"
    where = f"replay from {replay}" if replay else f"group {result.group}"
    click.echo(
        f"exported {result.written} events from {result.customers} customers"
        f" ({result.duplicates} already in the output, {skipped}; {where})",
        err=True,
    )
