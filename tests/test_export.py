"""``meterguard export``: every event exactly once, even when the exporter dies between writing
and acknowledging; the jsonl, csv and Stripe shapes; ``--since``. On every store kind."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from meterguard import cli
from meterguard import export as export_module
from meterguard.export import FileSink, export_events, parse_since
from meterguard.store.base import EVENT_VERSION, Store
from meterguard.store.cluster import RedisClusterStore
from meterguard.store.memory import MemoryStore
from meterguard.store.redis import RedisStore

from .conftest import CLUSTER_URL, REDIS_URL, drop_keys

NOV_1 = 1_793_491_200.0  # 2026-11-01T00:00:00Z


def usage_event(customer: str, ts: float, calls: int, records: int) -> dict[str, str]:
    """A usage event as the metering scripts write it (store/base.py, EVENT_VERSION)."""
    return {
        "v": EVENT_VERSION,
        "type": "usage",
        "customer": customer,
        "ts": f"{ts:.6f}",
        "period": "2026-11",
        "day": "2026-11-02",
        "calls": str(calls),
        "records": str(records),
        "replays": "0",
        "routes": json.dumps({"GET /v1/posts": [calls, records]}),
        "keys": json.dumps({"k1": [calls, records]}),
    }


async def fill(store: Store, customers: list[str], per_customer: int) -> list[str]:
    """Append events; returns their ids as the export names them."""
    ids = []
    for customer in customers:
        for n in range(per_customer):
            fields = usage_event(customer, NOV_1 + 86400 + n, 1, n)
            ids.append(f"{customer}/{await store.append_event(customer, fields)}")
    return ids


def exported_ids(path: Path) -> list[str]:
    return [json.loads(line)["event_id"] for line in path.read_text().splitlines()]


class Killed(Exception):
    pass


async def test_a_kill_between_write_and_ack_then_a_rerun_exports_each_event_once(
    store: Store, tmp_path: Path, unique_customer: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    customers = [unique_customer("a"), unique_customer("b")]
    ids = await fill(store, customers, 7)
    out = tmp_path / "events.jsonl"

    acks = []

    def die_on_the_second_batch(customer: str, batch: list[str]) -> None:
        acks.append(customer)
        if len(acks) == 2:
            raise Killed  # written and fsynced, never acknowledged

    monkeypatch.setattr(export_module, "_before_ack", die_on_the_second_batch)
    sink = FileSink(str(out), "jsonl")
    with pytest.raises(Killed):
        await export_events(store, customers, sink, batch=3)
    sink.stream.close()
    assert len(exported_ids(out)) == 6
    # The kill also tore a line being written: it is cut and rewritten.
    with out.open("a") as handle:
        handle.write('{"event_id": "half a li')

    monkeypatch.setattr(export_module, "_before_ack", lambda customer, batch: None)
    more = await fill(store, customers[:1], 2)  # new events arrive meanwhile
    sink = FileSink(str(out), "jsonl")
    result = await export_events(store, customers, sink, batch=3)
    sink.close()
    assert sorted(exported_ids(out)) == sorted(ids + more)  # no gap, no duplicate
    assert result.duplicates == 3  # the batch written before the kill, read again as pending

    sink = FileSink(str(out), "jsonl")
    assert (await export_events(store, customers, sink)).written == 0  # everything acknowledged
    sink.close()


async def test_jsonl_csv_and_stripe_shapes(store: Store, tmp_path: Path, unique_customer: Callable[[str], str]) -> None:
    acme = unique_customer("acme")
    usage_id = await store.append_event(acme, usage_event(acme, NOV_1 + 5.25, 3, 0))
    plan_fields = {
        "v": "1",
        "type": "plan",
        "customer": acme,
        "ts": f"{NOV_1 + 9:.6f}",
        "plan": "pro",
        "previous": "free",
    }
    plan_id = await store.append_event(acme, plan_fields)

    outputs = {}
    for fmt in ("jsonl", "csv", "stripe"):
        path = tmp_path / f"out.{fmt}"
        sink = FileSink(str(path), fmt)
        # each format its own consumer group, so each sees every event
        await export_events(store, [acme], sink, group=f"export-{fmt}")
        sink.close()
        outputs[fmt] = path.read_text().splitlines()

    first, second = (json.loads(line) for line in outputs["jsonl"])
    assert first == {"event_id": f"{acme}/{usage_id}", **usage_event(acme, NOV_1 + 5.25, 3, 0)}
    assert second == {"event_id": f"{acme}/{plan_id}", **plan_fields}

    rows = list(csv.reader(outputs["csv"]))
    assert rows[0] == list(export_module.CSV_COLUMNS)
    assert rows[1][:10] == [f"{acme}/{usage_id}", acme, "usage", f"{NOV_1 + 5.25:.6f}", "2026-11", "2026-11-02",
                            "3", "0", "0", ""]  # fmt: skip
    assert json.loads(rows[1][11]) == {"keys": '{"k1": [3, 0]}', "routes": '{"GET /v1/posts": [3, 0]}', "v": "1"}
    assert rows[2][2] == "plan" and rows[2][9:11] == ["pro", "free"]

    assert [json.loads(line) for line in outputs["stripe"]] == [
        {
            "event_name": "meterguard_calls",
            "timestamp": int(NOV_1 + 5),
            "identifier": f"{acme}/{usage_id}:calls",
            "payload": {"stripe_customer_id": acme, "value": "3"},
        }
    ]  # no records line (0), no line for the plan event


async def test_stripe_output_deduplicates_on_its_identifiers(
    store: Store, tmp_path: Path, unique_customer: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = unique_customer("acme")
    await store.append_event(acme, usage_event(acme, NOV_1, 2, 40))
    path = tmp_path / "stripe.jsonl"

    def killed(customer: str, batch: list[str]) -> None:
        raise Killed

    monkeypatch.setattr(export_module, "_before_ack", killed)
    sink = FileSink(str(path), "stripe")
    with pytest.raises(Killed):
        await export_events(store, [acme], sink)
    sink.stream.close()
    monkeypatch.undo()
    sink = FileSink(str(path), "stripe")
    assert (await export_events(store, [acme], sink)).duplicates == 1
    sink.close()
    names = [json.loads(line)["event_name"] for line in path.read_text().splitlines()]
    assert names == ["meterguard_calls", "meterguard_records"]


async def test_since_skips_older_events(store: Store, tmp_path: Path, unique_customer: Callable[[str], str]) -> None:
    acme = unique_customer("acme")
    await store.append_event(acme, usage_event(acme, NOV_1 - 1, 1, 1))
    newer = await store.append_event(acme, usage_event(acme, NOV_1, 1, 1))
    path = tmp_path / "out.jsonl"
    sink = FileSink(str(path), "jsonl")
    result = await export_events(store, [acme], sink, since=parse_since("2026-11-01"))
    sink.close()
    assert (result.written, result.before_since) == (1, 1)
    assert exported_ids(path) == [f"{acme}/{newer}"]


def test_parse_since() -> None:
    assert parse_since("2026-11-01") == NOV_1
    assert parse_since("2026-11-01T01:00:00Z") == NOV_1 + 3600
    assert parse_since("2026-11-01T02:00:00+01:00") == NOV_1 + 3600
    for bad in ("2026-13-01", "yesterday", "2026-11-01T00:00:00"):
        with pytest.raises(ValueError):
            parse_since(bad)


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------

PLANS = """\
version: 1
plans:
  free:
    quotas: {calls: 100}
  pro:
    price: "10.00"
    quotas: {calls: 100}
"""


@pytest.fixture(params=["memory", "redis", "cluster"])
def cli_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, key_prefix: str) -> Iterator[str]:
    """A store URL for the CLI; the memory kind shares one store between invocations."""
    memory = MemoryStore()

    def open_store(url: str) -> Store:
        if request.param == "memory":
            return memory
        if request.param == "redis":
            return RedisStore(url, key_prefix=key_prefix)
        return RedisClusterStore(url, key_prefix=key_prefix)

    monkeypatch.setattr(cli, "_open_store", open_store)
    for name in ("MG_STORE", "MG_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    url = {"memory": "memory://", "redis": REDIS_URL, "cluster": CLUSTER_URL}[request.param]
    yield url
    if request.param != "memory":
        asyncio.run(drop_keys(url, key_prefix))


def test_export_command_writes_plan_changes_once(
    cli_store: str, tmp_path: Path, unique_customer: Callable[[str], str]
) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS)
    opts = ["--config", str(plans), "--store", cli_store]
    runner = CliRunner()
    acme = unique_customer("acme")
    assert runner.invoke(cli.main, ["customers", "create", acme, "--plan", "free", *opts]).exit_code == 0
    assert runner.invoke(cli.main, ["customers", "set", acme, "--plan", "pro", *opts]).exit_code == 0
    out = tmp_path / "events.jsonl"
    args = ["export", "--output", str(out), "--customer", acme, *opts]
    result = runner.invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    assert "exported 1 events from 1 customers" in result.stderr
    (event,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (event["type"], event["plan"], event["previous"], event["customer"]) == ("plan", "pro", "free", acme)
    assert event["event_id"].startswith(f"{acme}/")
    assert runner.invoke(cli.main, args).exit_code == 0
    assert len(out.read_text().splitlines()) == 1

    result = runner.invoke(cli.main, ["export", "--since", "soon", *opts])
    assert result.exit_code == 2 and "--since" in result.output
