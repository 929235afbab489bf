"""The ``meterguard`` command (CONTRACT section 9), through click's CliRunner.

State commands run against each store kind. Each invocation opens and closes its own store,
as a shell would; the memory kind shares one MemoryStore between invocations (through the CLI's
``_open_store`` seam) so that a sequence of commands can be followed, and the Redis kinds write
under this test's key prefix so that teardown deletes exactly what the test wrote.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from meterguard import MeterGuard, cli
from meterguard.keys import generate_key, hash_key
from meterguard.store.base import Store
from meterguard.store.cluster import RedisClusterStore
from meterguard.store.memory import MemoryStore
from meterguard.store.redis import RedisStore

from .conftest import CLUSTER_URL, REDIS_URL, drop_keys
from .support import data_app

ROOT = Path(__file__).resolve().parent.parent

PLANS = """\
version: 1
currency: USD
routes:
  - {match: "GET /health", public: true}
  - {match: "GET /v1/posts/search", weight: 1}
plans:
  free:
    rate_limits: ["1000/minute"]
    quotas: {calls: 100, records: 1000}
  pro:
    price: "5000.00"
    rate_limits: ["1000/minute"]
    quotas: {calls: 2, records: 100}
    overage:
      calls: {unit: 1, price: "1.00"}
      spend_cap: "2500.00"
customers:
  static-co:
    plan: free
"""

BAD_PLANS = """\
version: 1
plans:
  free:
    price: 1.5
    rate_limits: ["1/second", "2/1 second"]
  pro:
    quotas: {calls: -1}
"""


@pytest.fixture
def plans_file(tmp_path: Path) -> str:
    path = tmp_path / "plans.yaml"
    path.write_text(PLANS)
    return str(path)


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("MG_STORE", "MG_CONFIG", "MG_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


class Backend:
    """Opens the store of one kind the way the CLI would, once per invocation."""

    def __init__(self, kind: str, prefix: str) -> None:
        self.kind = kind
        self.prefix = prefix
        self.memory = MemoryStore()
        self.url = {"memory": "memory://", "redis": REDIS_URL, "cluster": CLUSTER_URL}[kind]
        self.opened: list[str] = []

    def open(self, url: str) -> Store:
        self.opened.append(url)
        if self.kind == "memory":
            return self.memory
        if self.kind == "redis":
            return RedisStore(url, key_prefix=self.prefix)
        return RedisClusterStore(url, key_prefix=self.prefix)


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, key_prefix: str) -> Iterator[Backend]:
    made = Backend(request.param, key_prefix)
    monkeypatch.setattr(cli, "_open_store", made.open)
    yield made
    if made.kind != "memory":
        asyncio.run(drop_keys(made.url, key_prefix))


def run(runner: CliRunner, *args: str, input: str | None = None) -> Result:
    result = runner.invoke(cli.main, list(args), input=input, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def state(backend: Backend, plans_file: str) -> list[str]:
    return ["--config", plans_file, "--store", backend.url]


# ----------------------------------------------------------------------------------------------
# check
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [str(ROOT / "examples" / "plans.yaml"), str(ROOT / "src" / "meterguard" / "demo_plans.yaml")],
    ids=["example", "demo"],
)
def test_check_summarises_a_valid_file(runner: CliRunner, path: str) -> None:
    result = run(runner, "check", path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"{path}: OK")
    for section in ("plans (", "routes (", "customers (", "windows:", "quotas:", "overage:"):
        assert section in out


def test_check_summary_details(runner: CliRunner, plans_file: str) -> None:
    result = run(runner, "check", plans_file)
    assert result.exit_code == 0
    out = result.stdout
    assert "  pro: 5000.00 USD per period" in out
    assert "windows:  1000/1m" in out
    assert "quotas:   calls 2, records 100" in out
    assert "overage:  billed: calls 1.00 USD per 1, spend cap 2500.00 USD" in out
    assert "overage:  block" in out
    assert "GET /health: public" in out
    assert "GET /v1/posts/search: weight 1, all plans" in out
    assert "static-co: plan free, active, 0 keys" in out


def test_check_prints_every_error_with_file_and_line(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_PLANS)
    result = run(runner, "check", str(path))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{path}:4: plans.free.price: ")
    assert lines[1] == f"{path}:5: plans.free.rate_limits: two windows of the same length (1s)"
    assert lines[2].startswith(f"{path}:7: plans.pro.quotas.calls: ")


def test_check_a_missing_or_unparseable_file(runner: CliRunner, tmp_path: Path) -> None:
    result = run(runner, "check", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert result.stdout.strip() == f"{tmp_path / 'nope.yaml'}: cannot read the file: No such file or directory"
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nplans: [\n")
    result = run(runner, "check", str(broken))
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{broken}:")
    assert len(result.stdout.strip().splitlines()) == 1


# ----------------------------------------------------------------------------------------------
# customers and keys
# ----------------------------------------------------------------------------------------------


def test_customers_and_keys(
    runner: CliRunner, backend: Backend, plans_file: str, unique_customer: Callable[[str], str]
) -> None:
    opts = state(backend, plans_file)
    acme = unique_customer("acme")
    result = run(runner, "customers", "create", acme, "--plan", "free", *opts)
    assert result.exit_code == 0, result.output
    assert f"created customer {acme} on plan free" in result.stdout

    result = run(runner, "customers", "create", acme, "--plan", "free", *opts)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"meterguard: customer {acme!r} already exists"

    result = run(runner, "customers", "create", unique_customer("x"), "--plan", "gold", *opts)
    assert result.exit_code == 1 and "no plan 'gold'" in result.stderr

    result = run(runner, "customers", "list", *opts)
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows[acme][1:4] == ["free", "active", "1"]
    assert "static-co" in rows

    result = run(runner, "customers", "set", acme, "--plan", "pro", "--status", "suspended", *opts)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"customer {acme}: plan pro, suspended"
    listed = json.loads(run(runner, "customers", "list", "--json", *opts).stdout)["customers"]
    assert {"id": acme, "plan": "pro", "status": "suspended"}.items() <= next(
        c for c in listed if c["id"] == acme
    ).items()

    result = run(runner, "keys", "create", acme, *opts)
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("mg_live_") and len(result.stdout.splitlines()) == 1
    assert "shown this once" in result.stderr

    result = run(runner, "keys", "list", acme, "--json", *opts)
    keys = json.loads(result.stdout)["keys"]
    assert len(keys) == 1 and key.startswith(keys[0]["prefix"]) and keys[0]["revoked"] is False
    table = run(runner, "keys", "list", acme, *opts).stdout
    assert key not in table and keys[0]["key_id"] in table and "active" in table

    result = run(runner, "keys", "revoke", keys[0]["key_id"], *opts)
    assert result.exit_code == 0 and result.stdout.strip() == f"revoked {keys[0]['key_id']}"
    assert json.loads(run(runner, "keys", "list", acme, "--json", *opts).stdout)["keys"][0]["revoked"] is True
    result = run(runner, "keys", "revoke", "key_000000000000", *opts)
    assert result.exit_code == 1 and result.stderr.strip().endswith("no key 'key_000000000000'")


def test_unknown_customers_are_one_line_errors(
    runner: CliRunner, backend: Backend, plans_file: str, unique_customer: Callable[[str], str]
) -> None:
    nobody = unique_customer("nobody")
    for args in (
        ["customers", "set", nobody, "--plan", "pro"],
        ["keys", "create", nobody],
        ["keys", "list", nobody],
        ["usage", nobody],
        ["statement", nobody, "--period", "2026-11"],
    ):
        result = run(runner, *args, *state(backend, plans_file))
        assert result.exit_code == 1, args
        assert result.stderr.strip().splitlines()[-1] == f"meterguard: no customer {nobody!r}"
        assert result.stdout == ""


def test_usage_errors(runner: CliRunner, plans_file: str) -> None:
    result = run(runner, "customers", "set", "static-co", "--config", plans_file)
    assert result.exit_code == 2 and "--plan, --status" in result.output
    result = run(runner, "customers", "create", "bad{id}", "--plan", "free", "--config", plans_file)
    assert result.exit_code == 2
    result = run(runner, "customers", "list")
    assert result.exit_code == 2 and "--config" in result.output
    result = run(runner, "usage", "static-co", "--period", "2026-13", "--config", plans_file)
    assert result.exit_code == 2 and "YYYY-MM" in result.output


def test_a_bad_config_is_reported_per_line_without_a_traceback(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_PLANS)
    result = run(runner, "customers", "list", "--config", str(path))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0].startswith(f"{path}:4: plans.free.price:")
    assert len(result.stderr.splitlines()) == 3


def test_an_unreachable_store_is_one_line(runner: CliRunner, plans_file: str) -> None:
    result = runner.invoke(cli.main, ["customers", "list", "--config", plans_file, "--store", "redis://127.0.0.1:1/0"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "meterguard: the store is unreachable or failed: redis://127.0.0.1:1/0"
    )
    result = runner.invoke(cli.main, ["customers", "list", "--config", plans_file, "--store", "ftp://x"])
    assert result.exit_code == 1 and "unknown store URL scheme" in result.stderr


def test_store_precedence(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, plans_file: str) -> None:
    opened: list[str] = []

    def fake(url: str) -> Store:
        opened.append(url)
        return MemoryStore(url)

    monkeypatch.setattr(cli, "_open_store", fake)
    with_store = tmp_path / "with-store.yaml"
    with_store.write_text(PLANS.replace("currency: USD", "currency: USD\nstore: redis://file:6379/0"))

    result = run(runner, "customers", "list", "--config", plans_file)
    assert opened[-1] == "memory://" and "memory://" in result.stderr and "gone" in result.stderr
    run(runner, "customers", "list", "--config", str(with_store))
    assert opened[-1] == "redis://file:6379/0"
    monkeypatch.setenv("MG_STORE", "redis://env:6379/0")
    run(runner, "customers", "list", "--config", str(with_store))
    assert opened[-1] == "redis://env:6379/0"
    run(runner, "customers", "list", "--config", str(with_store), "--store", "redis://flag:6379/0")
    assert opened[-1] == "redis://flag:6379/0"
    monkeypatch.setenv("MG_CONFIG", plans_file)
    monkeypatch.delenv("MG_STORE")
    result = run(runner, "customers", "list")
    assert result.exit_code == 0 and opened[-1] == "memory://"


def test_keys_hash(runner: CliRunner) -> None:
    key = generate_key()
    result = run(runner, "keys", "hash", key)
    assert result.exit_code == 0 and result.stdout.strip() == hash_key(key)
    result = run(runner, "keys", "hash", input=key + "\n")
    assert result.stdout.strip() == hash_key(key)
    result = run(runner, "keys", "hash", key[:-1] + ("A" if key[-1] != "A" else "B"))
    assert result.exit_code == 1 and "not a well-formed" in result.stderr


# ----------------------------------------------------------------------------------------------
# usage and statements
# ----------------------------------------------------------------------------------------------


def _traffic(backend: Backend, plans_file: str, customer: str, plan: str, calls: list[int]) -> None:
    """Serve ``calls`` searches (each returning n records) through a gateway on the same store."""

    async def go() -> None:
        store = backend.open(backend.url)
        guard = MeterGuard(data_app, config=plans_file, store=store)
        try:
            await guard.directory.create(customer, plan)
            _, key = await guard.directory.issue_key(customer)
            transport = httpx.ASGITransport(app=guard)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
                for n in calls:
                    response = await client.get(f"/v1/posts/search?n={n}", headers={"x-api-key": key})
                    assert response.status_code == 200, response.text
        finally:
            if backend.kind != "memory":
                await guard.aclose()

    asyncio.run(go())


def _period() -> str:
    import time

    return time.strftime("%Y-%m", time.gmtime())


def test_usage_table_and_json(
    runner: CliRunner, backend: Backend, plans_file: str, unique_customer: Callable[[str], str]
) -> None:
    acme = unique_customer("acme")
    _traffic(backend, plans_file, acme, "free", [3, 4])
    opts = state(backend, plans_file)

    result = run(runner, "usage", acme, "--json", *opts)
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["customer"] == acme and document["plan"] == "free"
    assert document["calls"] == {"used": 2, "included": 100, "remaining": 98, "overage": 0}
    assert document["records"]["used"] == 7
    assert document["by_route"] == {"GET /v1/posts/search": {"calls": 2, "records": 7}}
    assert json.loads(run(runner, "usage", acme, "--json", "--period", _period(), *opts).stdout) == document

    table = run(runner, "usage", acme, *opts).stdout
    assert f"customer {acme}  plan free" in table
    assert any(line.split()[:5] == ["calls", "2", "100", "98", "0"] for line in table.splitlines())
    assert any(line.split()[:3] == ["records", "7", "1,000"] for line in table.splitlines())
    assert "charges: base 0.00 + overage 0.00 = 0.00 USD" in table
    assert "GET /v1/posts/search" in table


def test_statement_formats(
    runner: CliRunner, backend: Backend, plans_file: str, unique_customer: Callable[[str], str]
) -> None:
    acme = unique_customer("acme")
    _traffic(backend, plans_file, acme, "pro", [1, 1, 1, 1, 1])  # 2 calls included, 3 billed at 1.00
    opts = [*state(backend, plans_file), "--period", _period()]

    document = json.loads(run(runner, "statement", acme, "--format", "json", *opts).stdout)
    assert document["base"] == "5000.00"
    assert document["lines"] == [
        {
            "meter": "calls",
            "tier": 1,
            "up_to": None,
            "included": 2,
            "used": 5,
            "units": 3,
            "unit": 1,
            "price": "1.00",
            "amount": "3.00",
        }
    ]
    assert document["total"] == "5003.00" and document["currency"] == "USD"
    usage = json.loads(run(runner, "usage", acme, "--json", *state(backend, plans_file)).stdout)
    assert usage["charges"]["total"] == document["total"]

    markdown = run(runner, "statement", acme, *opts).stdout
    assert markdown.startswith(f"# Statement: {acme}, {_period()}")
    assert "| calls overage | 2 | 5 | 3 | 1 | 1.00 | 3.00 |" in markdown
    assert "| **total** | | | | | | **5003.00** |" in markdown

    rows = run(runner, "statement", acme, "--format", "csv", *opts).stdout.strip().splitlines()
    assert rows[0] == "customer,plan,period,item,included,used,units,unit,price,amount,currency"
    assert rows[1].endswith(",base,,,,,,5000.00,USD")
    assert rows[2] == f"{acme},pro,{_period()},overage:calls,2,5,3,1,1.00,3.00,USD"
    assert rows[3].endswith(",total,,,,,,5003.00,USD")

    # --json is --format json; --period defaults to the current period, as usage's does (issue 10)
    assert json.loads(run(runner, "statement", acme, "--json", *opts).stdout) == document
    assert json.loads(run(runner, "statement", acme, "--json", *state(backend, plans_file)).stdout) == document
    assert json.loads(run(runner, "statement", acme, "--json", "--period", "current", *opts[:-2]).stdout) == document
    result = run(runner, "statement", acme, "--json", "--format", "csv", *opts)
    assert result.exit_code == 2 and "disagree" in result.output


def _previous_period() -> str:
    import time

    year, month = time.gmtime().tm_year, time.gmtime().tm_mon
    return f"{year - 1}-12" if month == 1 else f"{year}-{month - 1:02d}"


def test_period_previous_is_the_last_period_that_ended(
    runner: CliRunner, backend: Backend, plans_file: str, unique_customer: Callable[[str], str]
) -> None:
    acme = unique_customer("acme")
    _traffic(backend, plans_file, acme, "pro", [1, 1, 1])  # all in the current period
    opts = state(backend, plans_file)
    for command in (["usage", acme, "--json"], ["statement", acme, "--format", "json"]):
        previous = json.loads(run(runner, *command, "--period", "previous", *opts).stdout)
        assert previous["period"]["start"] == f"{_previous_period()}-01T00:00:00Z"
        current = json.loads(run(runner, *command, *opts).stdout)
        assert current["period"]["start"] == previous["period"]["end"] == f"{_period()}-01T00:00:00Z"
    assert json.loads(run(runner, "usage", acme, "--json", "--period", "previous", *opts).stdout)["calls"]["used"] == 0
    result = run(runner, "usage", acme, "--period", "last", *opts)
    assert result.exit_code == 2 and "YYYY-MM" in result.output


# ----------------------------------------------------------------------------------------------
# --json on every command that prints (issue 11)
# ----------------------------------------------------------------------------------------------


def test_json_output_of_customer_and_key_commands(
    runner: CliRunner, backend: Backend, plans_file: str, unique_customer: Callable[[str], str]
) -> None:
    opts = state(backend, plans_file)
    acme = unique_customer("acme")
    created = json.loads(run(runner, "customers", "create", acme, "--plan", "free", "--json", *opts).stdout)
    assert {
        "id": acme,
        "plan": "free",
        "status": "active",
        "anchor_day": 1,
        "spend_cap": None,
    }.items() <= created.items()
    changed = run(runner, "customers", "set", acme, "--plan", "pro", "--spend-cap", "12.50", "--json", *opts).stdout
    assert {"id": acme, "plan": "pro", "spend_cap": "12.50"}.items() <= json.loads(changed).items()
    assert [entry["plan"] for entry in json.loads(changed)["plan_history"]] == ["free", "pro"]

    result = run(runner, "keys", "create", acme, "--expires", "30d", "--json", *opts)
    issued = json.loads(result.stdout)
    assert issued["key"].startswith("mg_live_") and issued["key"].startswith(issued["prefix"])
    assert (issued["customer"], issued["state"], issued["revoked"]) == (acme, "active", False)
    assert issued["expires_at"] is not None and "shown this once" in result.stderr
    assert hash_key(issued["key"]) not in result.output

    rotated = json.loads(run(runner, "keys", "rotate", issued["key_id"], "--grace", "0", "--json", *opts).stdout)
    assert rotated["key"].startswith("mg_live_") and rotated["key"] != issued["key"]
    assert rotated["replaces"]["key_id"] == issued["key_id"] and rotated["replaces"]["replaced_by"] == rotated["key_id"]

    revoked = json.loads(run(runner, "keys", "revoke", rotated["key_id"], "--json", *opts).stdout)
    assert (revoked["key_id"], revoked["revoked"], revoked["state"]) == (rotated["key_id"], True, "revoked")
    assert "key" not in revoked  # never the key itself

    hashed = json.loads(run(runner, "keys", "hash", issued["key"], "--json").stdout)
    assert hashed == {"hash": hash_key(issued["key"])}


def test_check_json(runner: CliRunner, plans_file: str, tmp_path: Path) -> None:
    result = run(runner, "check", plans_file, "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert (document["file"], document["ok"], document["currency"]) == (plans_file, True, "USD")
    assert document["plans"]["pro"]["price"] == "5000.00"
    assert document["plans"]["pro"]["overage"]["spend_cap"] == "2500.00"
    assert {"match": "GET /health", "public": True}.items() <= document["routes"][0].items()
    assert document["customers"] == [{"id": "static-co", "plan": "free", "status": "active", "keys": 0}]
    assert document["store"] is None and document["admin"]["path"] == "/_meterguard"

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PLANS)
    result = run(runner, "check", str(bad), "--json")
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["ok"] is False and len(document["errors"]) == 3
    first = document["errors"][0]
    assert (first["file"], first["line"], first["path"]) == (str(bad), 4, "plans.free.price")
    assert first["message"] == run(runner, "check", str(bad)).stdout.splitlines()[0]


# ----------------------------------------------------------------------------------------------
# read-only commands without a plans file (issue 10)
# ----------------------------------------------------------------------------------------------


def test_read_only_commands_need_only_the_store(
    runner: CliRunner, backend: Backend, plans_file: str, unique_customer: Callable[[str], str]
) -> None:
    acme = unique_customer("acme")
    run(runner, "customers", "create", acme, "--plan", "pro", *state(backend, plans_file))
    key_id = json.loads(run(runner, "keys", "create", acme, "--json", *state(backend, plans_file)).stdout)["key_id"]
    store = ["--store", backend.url]

    result = run(runner, "customers", "list", "--json", *store)
    assert result.exit_code == 0, result.output
    listed = {c["id"]: c for c in json.loads(result.stdout)["customers"]}
    assert listed[acme]["plan"] == "pro"
    assert "static-co" not in listed  # written only in plans.yaml: the store alone does not know it
    result = run(runner, "keys", "list", acme, "--json", *store)
    assert result.exit_code == 0, result.output
    assert [k["key_id"] for k in json.loads(result.stdout)["keys"]] == [key_id]

    # Commands that need plans (prices, quotas, the billing anchor) or change state still need the file.
    for args in (["usage", acme], ["statement", acme], ["customers", "create", "x", "--plan", "pro"],
                 ["keys", "revoke", key_id]):  # fmt: skip
        result = run(runner, *args, *store)
        assert result.exit_code == 2 and "--config" in result.output, args
    # Neither a file nor a store: nothing to read.
    result = run(runner, "customers", "list")
    assert result.exit_code == 2 and "--store" in result.output


# ----------------------------------------------------------------------------------------------
# serve
# ----------------------------------------------------------------------------------------------


def test_serve_refuses_several_workers_on_a_memory_store(runner: CliRunner, plans_file: str) -> None:
    result = run(runner, "serve", "tests.support:data_app", "--config", plans_file, "--workers", "2")
    assert result.exit_code == 2
    assert "memory://" in result.output and "--workers" in result.output


def test_serve_reports_a_bad_target_or_config(runner: CliRunner, plans_file: str, tmp_path: Path) -> None:
    result = run(runner, "serve", "no_such_module_here:app", "--config", plans_file)
    assert result.exit_code == 1 and "cannot import no_such_module_here:app" in result.stderr
    result = run(runner, "serve", "tests.support:nothing", "--config", plans_file)
    assert result.exit_code == 1 and "no attribute" in result.stderr
    result = run(runner, "serve", "tests.support", "--config", plans_file)
    assert result.exit_code == 1 and "MODULE:APP" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PLANS)
    result = run(runner, "serve", "tests.support:data_app", "--config", str(bad))
    assert result.exit_code == 1 and result.stderr.startswith(f"{bad}:4:")


def test_serve_wraps_the_app_in_meterguard(runner: CliRunner, plans_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(cli, "_run_server", lambda guard, options, before=None: served.append((guard, options)))
    result = run(runner, "serve", "tests.support:data_app", "--config", plans_file, "--port", "8123")
    assert result.exit_code == 0, result.output
    ((app, options),) = served
    # the app itself: MeterGuard answers the lifespan for an app that does not speak it (test_middleware.py)
    assert isinstance(app, MeterGuard) and app.app is data_app
    assert (options["host"], options["port"]) == ("127.0.0.1", 8123)
    assert app.store.url == "memory://"
    # uvicorn's own loop and protocol choice (uvloop, httptools where installed), no access log
    assert (options["loop"], options["http"], options["access_log"]) == ("auto", "auto", False)
    assert (options["proxy_headers"], options["forwarded_allow_ips"], options["root_path"]) == (True, None, "")
    assert options["log_config"]["loggers"]["meterguard"]["handlers"] == ["meterguard"]


def test_serve_with_workers_uses_an_import_string(
    runner: CliRunner, plans_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meterguard.cli

    calls: list[tuple[Any, dict[str, Any]]] = []
    # run_workers: uvicorn's supervisor with SIGHUP forwarded (tests/test_operators_workers.py runs it for real)
    monkeypatch.setattr(meterguard.cli, "run_workers", lambda app, **kwargs: calls.append((app, kwargs)))
    for name in ("MG_SERVE_TARGET", "MG_CONFIG", "MG_STORE"):
        monkeypatch.setenv(name, "placeholder")  # monkeypatch restores them, whatever serve writes
    result = run(
        runner, "serve", "tests.support:data_app", "--config", plans_file, "--store", REDIS_URL, "--workers", "3"
    )
    assert result.exit_code == 0, result.output
    ((target, kwargs),) = calls
    assert target == "meterguard._serve:create_app"
    assert kwargs["workers"] == 3
    assert (kwargs["loop"], kwargs["http"], kwargs["access_log"]) == ("auto", "auto", False)
    assert os.environ["MG_SERVE_TARGET"] == "tests.support:data_app"
    assert os.environ["MG_CONFIG"] == os.path.abspath(plans_file)
    assert os.environ["MG_STORE"] == REDIS_URL

    # What each worker then builds:
    from meterguard._serve import create_app

    app = create_app()
    assert isinstance(app, MeterGuard) and app.app is data_app
    assert app.store.url == REDIS_URL
