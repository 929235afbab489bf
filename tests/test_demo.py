"""The bundled demo: its plans, the posts API on its own and behind meterguard, `meterguard demo`."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from meterguard import MeterGuard, cli
from meterguard import demo as demo_module
from meterguard.demo import DemoCustomer, create_demo_app, demo_config, provision
from meterguard.keys import is_well_formed
from meterguard.store.memory import MemoryStore

from .conftest import REDIS_URL, drop_keys
from .support import Clock, utc

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "demo-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def test_demo_plans_follow_the_x_tiers() -> None:
    config = demo_config()
    assert list(config.plans) == ["free", "basic", "pro", "enterprise"]
    free = config.plans["free"]
    # Small windows, so that the curl loop the demo prints meets a 429 at once.
    assert [(w.limit, w.seconds) for w in free.windows] == [(1, 1), (5, 60)]
    assert free.overage is None
    assert config.plans["pro"].overage is not None and config.plans["pro"].overage.spend_cap is not None
    archive = config.routes.match("GET", "/v1/posts/archive")
    assert archive is not None and archive.weight == 5 and archive.plans == frozenset({"pro", "enterprise"})
    assert config.routes.match("GET", "/v1/posts/123") is not None
    health = config.routes.match("GET", "/health")
    assert health is not None and health.public


async def test_posts_api_on_its_own() -> None:
    app = create_demo_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://demo.test") as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        body = (await client.get("/v1/posts/search?q=redis&limit=5")).json()
        assert len(body["data"]) == 5 and body["meta"]["result_count"] == 5
        assert all("redis" in post["text"].lower() for post in body["data"])
        assert body["meta"]["capped_by_quota"] is False
        following = (
            await client.get(f"/v1/posts/search?q=redis&limit=5&next_token={body['meta']['next_token']}")
        ).json()
        assert following["data"][0]["id"] != body["data"][0]["id"]
        assert (await client.get("/v1/posts/search?limit=0")).status_code == 400
        assert (await client.get("/v1/posts/search?limit=101")).status_code == 400
        archive = (await client.get("/v1/posts/archive?q=redis")).json()
        assert archive["meta"]["total_matches"] > body["meta"]["total_matches"]
        one = await client.get(f"/v1/posts/{body['data'][0]['id']}")
        assert one.json()["data"] == body["data"][0]
        assert one.headers["x-meterguard-records"] == "1"
        assert (await client.get("/v1/posts/nope")).status_code == 404


@pytest.fixture
async def demo(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, DemoCustomer], Clock]]:
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    clock = Clock(utc(2026, 11, 10, 12, 0, 0))
    config = demo_config()
    guard = MeterGuard(create_demo_app(config), config=config, store=MemoryStore(clock=clock), clock=clock)
    made = {customer.plan: customer for customer in await provision(guard.directory)}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://demo.test") as client:
        yield client, made, clock


async def test_demo_behind_meterguard(demo: tuple[httpx.AsyncClient, dict[str, DemoCustomer], Clock]) -> None:
    client, made, clock = demo
    assert set(made) == {"free", "basic", "pro", "enterprise"}
    assert all(is_well_formed(customer.key) for customer in made.values())
    free = {"x-api-key": made["free"].key}

    response = await client.get("/v1/posts/search?q=redis", headers=free)
    assert response.status_code == 200
    assert "ratelimit" in response.headers and "x-meterguard-records" not in response.headers
    # Headers leave before the body is counted: they carry this call, not yet its records.
    assert response.headers["x-meterguard-usage"] == "calls=1;limit=100, records=0;limit=100"
    # 1/second: the next call at once is a window 429, as the printed curl loop shows.
    refused = await client.get("/v1/posts/search?q=redis", headers=free)
    assert refused.status_code == 429 and refused.json()["scope"] == "window"
    assert (await client.get("/v1/posts/archive", headers=free)).status_code == 403

    clock.advance(2)
    one = await client.get("/v1/posts/1800000000000001999", headers=free)
    assert one.status_code == 200 and "x-meterguard-records" not in one.headers
    pro = {"x-api-key": made["pro"].key}
    archive = await client.get("/v1/posts/archive?q=python&limit=20", headers=pro)
    assert archive.status_code == 200 and len(archive.json()["data"]) == 20

    usage = (await client.get(f"/_meterguard/customers/{made['free'].customer}/usage", headers=ADMIN)).json()
    assert usage["calls"]["used"] == 2 and usage["records"]["used"] == 11
    assert usage["by_route"] == {
        "GET /v1/posts/search": {"calls": 1, "records": 10},
        "GET /v1/posts/{id}": {"calls": 1, "records": 1},
    }
    assert usage["rejected"]["rate_limited"] == 1
    pro_usage = (await client.get("/_meterguard/me/usage", headers=pro)).json()
    assert pro_usage["calls"]["used"] == 5 and pro_usage["records"]["used"] == 20


async def test_demo_caps_pages_to_the_records_left(
    demo: tuple[httpx.AsyncClient, dict[str, DemoCustomer], Clock],
) -> None:
    client, made, clock = demo
    free = {"x-api-key": made["free"].key}
    first = await client.get("/v1/posts/archive", headers={"x-api-key": made["basic"].key})
    assert first.status_code == 403
    body = (await client.get("/v1/posts/search?limit=95", headers=free)).json()
    assert len(body["data"]) == 95
    clock.advance(61)
    body = (await client.get("/v1/posts/search?limit=10", headers=free)).json()
    assert len(body["data"]) == 5 and body["meta"]["capped_by_quota"] is True
    clock.advance(61)
    used_up = await client.get("/v1/posts/search?limit=10", headers=free)
    assert used_up.status_code == 429 and used_up.json()["scope"] == "period"
    # A plan billed for records gets whole pages, whatever its quota says.
    pro = (await client.get("/v1/posts/search?limit=100", headers={"x-api-key": made["pro"].key})).json()
    assert len(pro["data"]) == 100


def test_meterguard_demo_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MG_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("MG_STORE", raising=False)
    served: list[tuple[Any, str, int]] = []

    def fake_server(app: Any, options: dict[str, Any], before: Callable[[], Awaitable[None]] | None = None) -> None:
        served.append((app, options["host"], options["port"]))
        if before is not None:  # in the server's loop, before it listens: the customers and the banner
            asyncio.run(before())

    monkeypatch.setattr(cli, "_run_server", fake_server)
    result = CliRunner().invoke(cli.main, ["demo", "--port", "8123", "--store", "memory://"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "  store: memory://\n" in out and "meterguard demo --store redis://" in out
    assert re.search(r"^  plans: /\S+demo_plans\.yaml$", out, re.MULTILINE), out
    keys = re.findall(r"mg_live_[0-9A-Za-z]{38}", out)
    assert len(set(keys)) == 4 and all(is_well_formed(key) for key in keys)
    for plan in ("free", "basic", "pro", "enterprise"):
        assert f"demo-{plan}" in out
    token = os.environ["MG_ADMIN_TOKEN"]  # generated and set before the middleware was built
    assert f"admin token (MG_ADMIN_TOKEN): {token}" in out
    assert "curl -i -H 'x-api-key: " in out and "http://127.0.0.1:8123/v1/posts/search?q=redis" in out
    assert "for i in $(seq" in out and "/_meterguard/customers/demo-free/usage" in out
    ((app, host, port),) = served
    assert isinstance(app, MeterGuard) and app.admin is not None and (host, port) == ("127.0.0.1", 8123)


def test_demo_on_redis_can_be_read_with_the_cli(monkeypatch: pytest.MonkeyPatch, key_prefix: str) -> None:
    """Issue 10: the demo prints its plans file and a store URL, and the printed command works."""
    monkeypatch.delenv("MG_STORE", raising=False)
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    served: list[Any] = []

    def fake_server(app: Any, options: dict[str, Any], before: Callable[[], Awaitable[None]] | None = None) -> None:
        served.append(app)

        async def serve() -> None:  # in the server's loop: provision and announce, then a request
            if before is not None:
                await before()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://demo.test") as client:
                key = re.findall(r"free +demo-free +(mg_live_\w+)", served_output[0])[0] if served_output else ""
                assert (await client.get("/v1/posts/search?q=redis", headers={"x-api-key": key})).status_code == 200
            await app.aclose()

        asyncio.run(serve())

    served_output: list[str] = []
    real_echo = cli.click.echo

    def echo(message: Any = None, *args: Any, **kwargs: Any) -> None:
        served_output.append(str(message))
        real_echo(message, *args, **kwargs)

    monkeypatch.setattr(cli, "_run_server", fake_server)
    monkeypatch.setattr(cli.click, "echo", echo)
    # the default store of the demo, pointed at the test Redis under this test's prefix
    monkeypatch.setattr(demo_module, "DEMO_REDIS_URL", f"{REDIS_URL}?prefix={key_prefix}")
    try:
        result = CliRunner().invoke(cli.main, ["demo"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        monkeypatch.setattr(cli.click, "echo", real_echo)
        out = result.stdout
        assert f"  store: {REDIS_URL}?prefix={key_prefix} (a Redis answered at " in out
        [command] = [line.strip() for line in out.splitlines() if line.strip().startswith("meterguard usage ")]
        args = shlex.split(command)[1:]
        assert args[:2] == ["usage", "demo-free"] and "--config" in args and "--store" in args
        usage = CliRunner().invoke(cli.main, [*args, "--json"], catch_exceptions=False)
        assert usage.exit_code == 0, usage.output
        document = json.loads(usage.stdout)
        assert document["calls"]["used"] == 1 and document["records"]["used"] == 10
        assert any("meterguard statement demo-pro --period" in line for line in out.splitlines())
    finally:
        asyncio.run(drop_keys(REDIS_URL, key_prefix))


def test_demo_store_falls_back_to_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_module, "DEMO_REDIS_URL", "redis://127.0.0.1:1/0?prefix=mgdemo")
    url, why = demo_module.demo_store(None)
    assert url == "memory://" and "no Redis answered at redis://127.0.0.1:1/0" in why
    assert demo_module.demo_store("redis://elsewhere:6379/2") == ("redis://elsewhere:6379/2", "as given")


async def test_starlette_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_STORE", "memory://")
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    spec = importlib.util.spec_from_file_location("starlette_example", ROOT / "examples" / "starlette_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=module.app), base_url="http://ex.test") as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v1/posts/search")).status_code == 401
        response = await client.post("/_meterguard/customers", headers=ADMIN, json={"id": "ex-1", "plan": "free"})
        assert response.status_code == 201
        key = (await client.post("/_meterguard/customers/ex-1/keys", headers=ADMIN)).json()["key"]
        response = await client.get("/v1/posts/search?q=redis&limit=3", headers={"x-api-key": key})
        assert response.status_code == 200 and len(response.json()["data"]) == 3


async def test_fastapi_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/fastapi_app.py as its docstring runs it: both ways of counting records."""
    monkeypatch.setenv("MG_STORE", "memory://")
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    spec = importlib.util.spec_from_file_location("fastapi_example", ROOT / "examples" / "fastapi_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=module.app), base_url="http://ex.test") as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/v1/posts")).status_code == 401
        for customer, plan in (("ex-basic", "basic"), ("ex-pro", "pro")):
            response = await client.post("/_meterguard/customers", headers=ADMIN, json={"id": customer, "plan": plan})
            assert response.status_code == 201
        basic = (await client.post("/_meterguard/customers/ex-basic/keys", headers=ADMIN)).json()["key"]
        response = await client.get("/v1/posts/search?q=redis&limit=5", headers={"x-api-key": basic})
        assert response.status_code == 200 and len(response.json()["data"]) == 5
        response = await client.get("/v1/posts?limit=3", headers={"x-api-key": basic})
        assert response.status_code == 200 and len(response.json()) == 3
        assert (await client.get("/v1/posts/7", headers={"x-api-key": basic})).status_code == 200
        usage = (await client.get("/_meterguard/customers/ex-basic/usage", headers=ADMIN)).json()
        assert (usage["calls"]["used"], usage["records"]["used"], usage["uncounted"]) == (3, 9, 0)
