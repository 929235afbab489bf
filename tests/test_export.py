"""``meterguard export``: every event exactly once, even when the exporter dies between writing
and acknowledging; the jsonl, csv and Stripe shapes; ``--since``. On every store kind."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from meterguard import MeterGuard, cli
from meterguard import export as export_module
from meterguard.export import FileSink, export_events, parse_since, rfc3339_ts, typed
from meterguard.store.base import EVENT_VERSION, Store
from meterguard.store.cluster import RedisClusterStore
from meterguard.store.memory import MemoryStore
from meterguard.store.redis import RedisStore

from .conftest import CLUSTER_URL, REDIS_URL, drop_keys
from .support import data_app

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

    # Typed values (issue 10): counts are numbers, routes and keys objects, ts RFC 3339, v a number.
    first, second = (json.loads(line) for line in outputs["jsonl"])
    assert first == {
        "event_id": f"{acme}/{usage_id}",
        "customer": acme,
        "type": "usage",
        "ts": "2026-11-01T00:00:05.250000Z",
        "v": 1,
        "period": "2026-11",
        "day": "2026-11-02",
        "calls": 3,
        "records": 0,
        "replays": 0,
        "routes": {"GET /v1/posts": [3, 0]},
        "keys": {"k1": [3, 0]},
    }
    assert list(first)[:5] == ["event_id", "customer", "type", "ts", "v"]
    assert second == {
        "event_id": f"{acme}/{plan_id}",
        "customer": acme,
        "type": "plan",
        "ts": "2026-11-01T00:00:09.000000Z",
        "v": 1,
        "plan": "pro",
        "previous": "free",
    }

    rows = list(csv.reader(outputs["csv"]))
    assert rows[0] == list(export_module.CSV_COLUMNS)
    assert rows[1][:10] == [f"{acme}/{usage_id}", acme, "usage", "2026-11-01T00:00:05.250000Z", "2026-11",
                            "2026-11-02", "3", "0", "0", ""]  # fmt: skip
    assert json.loads(rows[1][11]) == {"keys": {"k1": [3, 0]}, "routes": {"GET /v1/posts": [3, 0]}, "v": 1}
    assert rows[2][2] == "plan" and rows[2][9:11] == ["pro", "free"]

    assert [json.loads(line) for line in outputs["stripe"]] == [
        {
            "event_name": "meterguard_calls",
            "timestamp": int(NOV_1 + 5),
            "identifier": f"{acme}/{usage_id}:calls",
            "payload": {"stripe_customer_id": acme, "value": "3"},
        }
    ]  # no records line (0), no line for the plan event


def v2_event(customer: str, ts: str, calls: int, records: int, unmetered: int | None = None) -> dict[str, str]:
    """A usage event as the Redis ledger writes it (store/lua/meter.lua: v 2, ts "<sec>.<usec>")."""
    fields = {
        "v": "2", "type": "usage", "customer": customer, "period": "2026-11", "day": "2026-11-02", "ts": ts,
        "calls": str(calls), "records": str(records), "replays": "0",
        "routes": json.dumps({"GET /v1/posts": [calls, records]}), "keys": json.dumps({"key_1": [calls, records]}),
    }  # fmt: skip
    if unmetered is not None:
        fields["unmetered"] = str(unmetered)
    return fields


async def test_v2_events_and_corrections(store: Store, tmp_path: Path, unique_customer: Callable[[str], str]) -> None:
    """A correction (an admission undone after a fault) is a usage event with negative counts."""
    acme = unique_customer("acme")
    sold = await store.append_event(acme, v2_event(acme, "1793491205.000001", 4, 40, unmetered=2))
    undone = await store.append_event(acme, v2_event(acme, "1793491206.500000", -1, 0))
    out = {}
    for fmt in ("jsonl", "stripe", "csv"):
        sink = FileSink(str(tmp_path / fmt), fmt)
        await export_events(store, [acme], sink, group=f"g-{fmt}")
        sink.close()
        out[fmt] = (tmp_path / fmt).read_text().splitlines()
    first, second = (json.loads(line) for line in out["jsonl"])
    # the microsecond survives: read as a decimal, not through a float (which gives .000000)
    assert (first["v"], first["ts"], first["calls"], first["records"]) == (2, "2026-11-01T00:00:05.000001Z", 4, 40)
    assert first["unmetered"] == 2 and first["keys"] == {"key_1": [4, 40]}
    assert (second["ts"], second["calls"], second["records"]) == ("2026-11-01T00:00:06.500000Z", -1, 0)
    assert second["routes"] == {"GET /v1/posts": [-1, 0]}
    assert [(line["identifier"], line["payload"]["value"]) for line in map(json.loads, out["stripe"])] == [
        (f"{acme}/{sold}:calls", "4"),
        (f"{acme}/{sold}:records", "40"),
        (f"{acme}/{undone}:calls", "-1"),  # a negative meter event under its own identifier; no records line (0)
    ]
    rows = list(csv.reader(out["csv"]))
    assert rows[2][6:8] == ["-1", "0"] and json.loads(rows[1][11])["unmetered"] == 2


def test_rfc3339_ts() -> None:
    assert rfc3339_ts("1793491205.250000") == "2026-11-01T00:00:05.250000Z"  # v1, v2
    assert rfc3339_ts("1793491205.2500002") == "2026-11-01T00:00:05.250000Z"  # the memory store's repr(float)
    assert rfc3339_ts("1793491205") == "2026-11-01T00:00:05.000000Z"
    assert rfc3339_ts("1793491205.000001") == "2026-11-01T00:00:05.000001Z"
    for bad in ("", "soon", "nan", "inf", "1e30"):
        assert rfc3339_ts(bad) is None


def test_an_unreadable_value_is_kept_as_written() -> None:
    fields = {"v": "x", "type": "usage", "ts": "later", "calls": "1.5", "routes": "{not json"}
    assert typed("c/1-0", "c", fields) == {
        "event_id": "c/1-0", "customer": "c", "type": "usage", "ts": "later", "v": "x", "calls": "1.5",
        "routes": "{not json",
    }  # fmt: skip


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


def test_default_groups() -> None:
    assert (
        export_module.default_group("out/usage.jsonl", "jsonl") == f"export:file:{os.path.abspath('out/usage.jsonl')}"
    )
    assert export_module.default_group(None, "jsonl") == "export"  # the name every export used before
    assert export_module.default_group(None, "stripe") == "export:stripe"
    assert export_module.default_group(None, "csv") == "export:csv"


# ------------------------------------------------------------------------------------------------
# groups, replays, progress, --json: the command on every store, with events a gateway wrote
# ------------------------------------------------------------------------------------------------


class Exporter:
    """The CLI on one store, with a gateway on the same store to make real usage events."""

    def __init__(self, url: str, tmp_path: Path, plans: str = PLANS) -> None:
        self.url = url
        self.tmp = tmp_path
        self.plans = tmp_path / "plans.yaml"
        self.plans.write_text(plans)
        self.runner = CliRunner()

    @property
    def opts(self) -> list[str]:
        return ["--config", str(self.plans), "--store", self.url]

    def traffic(self, customer: str, calls: list[int], *, create: bool = True) -> None:
        async def go() -> None:
            store = cli._open_store(self.url)
            guard = MeterGuard(data_app, config=str(self.plans), store=store)
            try:
                if create:
                    await guard.directory.create(customer, "free")
                _, key = await guard.directory.issue_key(customer)
                transport = httpx.ASGITransport(app=guard)
                async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                    for n in calls:
                        response = await client.get(f"/v1/posts/search?n={n}", headers={"x-api-key": key})
                        assert response.status_code == 200, response.text
            finally:
                if not self.url.startswith("memory"):  # the memory store is shared between invocations
                    await guard.aclose()

        asyncio.run(go())

    def export(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(cli.main, ["export", *args], catch_exceptions=False)
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        return result

    def ids(self, name: str, fmt: str = "jsonl") -> list[str]:
        lines = (self.tmp / name).read_text().splitlines()
        if fmt == "stripe":
            return sorted({json.loads(line)["identifier"].rsplit(":", 1)[0] for line in lines})
        return sorted(json.loads(line)["event_id"] for line in lines)


@pytest.fixture
def exporter(cli_store: str, tmp_path: Path) -> Exporter:
    return Exporter(cli_store, tmp_path)


def test_each_output_file_and_format_gets_every_event(
    exporter: Exporter, unique_customer: Callable[[str], str]
) -> None:
    """The new user's trap (issue 10): a jsonl export, then ``--format stripe -o stripe.jsonl``,
    wrote 0 lines, as did a jsonl export to a second file: they shared one consumer group."""
    acme = unique_customer("acme")
    exporter.traffic(acme, [3, 4])
    only = ["--customer", acme, *exporter.opts]
    exporter.export("-o", str(exporter.tmp / "a.jsonl"), *only)
    events = exporter.ids("a.jsonl")
    exporter.export("--format", "stripe", "-o", str(exporter.tmp / "stripe.jsonl"), *only)
    assert exporter.ids("stripe.jsonl", "stripe") == events

    usage = [json.loads(line) for line in (exporter.tmp / "a.jsonl").read_text().splitlines()]
    assert sum(event["calls"] for event in usage) == 2 and sum(event["records"] for event in usage) == 7
    assert all(event["type"] == "usage" and event["ts"].endswith("Z") for event in usage)
    # as each store writes them: the Redis ledger folds usage per batch (v 2), memory per request (v 1)
    assert {event["v"] for event in usage} == ({1} if exporter.url.startswith("memory") else {2})
    exporter.export("-o", str(exporter.tmp / "b.jsonl"), *only)
    assert exporter.ids("b.jsonl") == events
    stdout = exporter.export(*only).stdout  # stdout: a group per format
    assert sorted(json.loads(line)["event_id"] for line in stdout.splitlines()) == events
    rows = exporter.export("--format", "csv", *only).stdout.splitlines()
    assert sorted(row.split(",", 1)[0] for row in rows[1:]) == events

    # and each of them exactly once: a rerun of any writes nothing
    for args in (
        ["-o", str(exporter.tmp / "a.jsonl")],
        ["--format", "stripe", "-o", str(exporter.tmp / "stripe.jsonl")],
    ):
        assert "exported 0 events" in exporter.export(*args, *only).stderr
    assert exporter.export(*only).stdout == ""
    assert exporter.ids("a.jsonl") == events


def test_one_group_across_rotating_files(exporter: Exporter, unique_customer: Callable[[str], str]) -> None:
    acme = unique_customer("acme")
    only = ["--customer", acme, *exporter.opts]
    exporter.traffic(acme, [1, 2])
    exporter.export("-o", str(exporter.tmp / "day1.jsonl"), "--group", "billing", *only)
    exporter.traffic(acme, [5], create=False)
    result = exporter.export("-o", str(exporter.tmp / "day2.jsonl"), "--group", "billing", *only)
    assert "group billing" in result.stderr
    exporter.export("-o", str(exporter.tmp / "all.jsonl"), *only)
    day1, day2 = exporter.ids("day1.jsonl"), exporter.ids("day2.jsonl")
    assert day1 and day2 and not set(day1) & set(day2)
    assert sorted(day1 + day2) == exporter.ids("all.jsonl")
    assert exporter.export("--group", " ", *only, code=2).exit_code == 2


def test_replay_writes_kept_events_again_and_moves_no_group(
    exporter: Exporter, unique_customer: Callable[[str], str]
) -> None:
    acme = unique_customer("acme")
    only = ["--customer", acme, *exporter.opts]
    exporter.traffic(acme, [2, 2, 2])
    today = time.strftime("%Y-%m-%d", time.gmtime())
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))

    result = exporter.export("--replay", today, "-o", str(exporter.tmp / "replay.jsonl"), *only)
    assert "replay from" in result.stderr
    replayed = exporter.ids("replay.jsonl")
    assert replayed
    # the replay acknowledged nothing: the file's own group still gets every event
    exporter.export("-o", str(exporter.tmp / "a.jsonl"), *only)
    assert exporter.ids("a.jsonl") == replayed
    # and a stdout group too, after a replay to stdout
    replay_out = exporter.export("--replay", today, *only).stdout.splitlines()
    assert sorted(json.loads(line)["event_id"] for line in replay_out) == replayed
    assert len(exporter.export(*only).stdout.splitlines()) == len(replayed)

    # a replay into a file that holds the events adds none; one from tomorrow finds none
    summary = json.loads(
        exporter.export("--replay", today, "-o", str(exporter.tmp / "a.jsonl"), "--json", *only).stdout
    )
    assert (summary["written"], summary["duplicates"], summary["group"]) == (0, len(replayed), None)
    assert summary["oldest"].startswith(today)
    empty = exporter.export("--replay", tomorrow, "-o", str(exporter.tmp / "none.jsonl"), "--json", *only)
    assert json.loads(empty.stdout)["written"] == 0 and json.loads(empty.stdout)["oldest"] is None

    for args in (["--since", today], ["--group", "g"]):
        result = exporter.export("--replay", today, *args, *only, code=2)
        assert "--replay" in result.output
    assert "--replay" in exporter.export("--replay", "whenever", *only, code=2).output


def test_an_export_trims_after_keep_exported_seconds_of_the_plans_file(
    exporter: Exporter, unique_customer: Callable[[str], str]
) -> None:
    """The store trims what every group has exported, keeping events.keep_exported_seconds; the
    CLI is the process that acknowledges, so it must know the file's setting (it used the store's
    default of a day before)."""
    if exporter.url.startswith("memory"):
        pytest.skip("the memory store keeps its last 10,000 events per customer, exported or not")
    exporter.plans.write_text(PLANS + "events:\n  keep_exported_seconds: 0\n")
    acme = unique_customer("acme")
    only = ["--customer", acme, *exporter.opts]
    exporter.traffic(acme, [1, 1])
    today = time.strftime("%Y-%m-%d", time.gmtime())
    before = json.loads(exporter.export("--replay", today, "-o", str(exporter.tmp / "r1"), "--json", *only).stdout)
    assert before["written"] > 0
    exporter.export("-o", str(exporter.tmp / "a.jsonl"), *only)  # the only group: acknowledged, so trimmed at once
    after = json.loads(exporter.export("--replay", today, "-o", str(exporter.tmp / "r2"), "--json", *only).stdout)
    assert after["written"] == 0


def test_json_summary_goes_where_the_events_do_not(exporter: Exporter, unique_customer: Callable[[str], str]) -> None:
    acme = unique_customer("acme")
    only = ["--customer", acme, *exporter.opts]
    exporter.traffic(acme, [1])
    path = exporter.tmp / "a.jsonl"
    summary = json.loads(exporter.export("-o", str(path), "--json", *only).stdout)
    assert summary == {
        "written": len(exporter.ids("a.jsonl")), "duplicates": 0, "before_since": 0, "customers": 1,
        "group": f"export:file:{path}", "oldest": None,
    }  # fmt: skip
    exporter.traffic(acme, [1], create=False)
    result = exporter.export("--json", *only)
    events = [json.loads(line) for line in result.stdout.splitlines()]  # stdout holds events, only events
    assert events and all("event_id" in event for event in events)
    tail = result.stderr[result.stderr.index("{\n") :]
    assert json.loads(tail)["written"] == len(events) and json.loads(tail)["group"] == "export"


def test_progress_bar_on_a_terminal_only(
    exporter: Exporter, unique_customer: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meterguard import _cli_reports

    acme = unique_customer("acme")
    exporter.traffic(acme, [1, 1])
    only = ["--customer", acme, *exporter.opts]
    result = exporter.export("-o", str(exporter.tmp / "quiet.jsonl"), *only)
    assert "exporting" not in result.stderr  # not a terminal (CliRunner): not a byte of progress

    terminals: set[str] = {"stderr"}

    def is_terminal(stream: object) -> bool:
        return (stream is sys.stderr and "stderr" in terminals) or (stream is sys.stdout and "stdout" in terminals)

    monkeypatch.setattr(_cli_reports, "_is_terminal", is_terminal)
    import click._termui_impl

    monkeypatch.setattr(click._termui_impl, "isatty", lambda stream: True)  # click's own check, for the real bar
    exporter.traffic(acme, [1], create=False)
    result = exporter.export("-o", str(exporter.tmp / "bar.jsonl"), *only)
    assert "exporting" in result.stderr and "0/1" in result.stderr and "1/1" in result.stderr
    assert re.search(r"1/1 +[0-9]+ events", result.stderr)

    terminals.add("stdout")  # the events go to the terminal: no bar to tear them
    result = exporter.export(*only)
    assert "exporting" not in result.stderr


def test_export_from_the_store_alone(exporter: Exporter, unique_customer: Callable[[str], str]) -> None:
    acme = unique_customer("acme")
    exporter.traffic(acme, [2])
    store_only = ["--store", exporter.url]
    result = exporter.export("-o", str(exporter.tmp / "a.jsonl"), "--customer", acme, *store_only)
    assert exporter.ids("a.jsonl") and "note:" not in result.stderr
    result = exporter.export("-o", str(exporter.tmp / "b.jsonl"), *store_only)
    assert "customers written only in plans.yaml are not exported" in result.stderr
    assert exporter.ids("a.jsonl") == [i for i in exporter.ids("b.jsonl") if i.startswith(f"{acme}/")]
    assert "--store" in exporter.export(code=2).output
