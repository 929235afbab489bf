"""The admin API (CONTRACT section 7) through the MeterGuard middleware, in-process, over every store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from meterguard import ConfigError, MeterGuard, StoreUnavailable, parse_config
from meterguard.admin import create_admin_app
from meterguard.keys import hash_key, is_well_formed
from meterguard.store.base import Store
from meterguard.store.memory import MemoryStore

from .support import Clock, data_app, utc

TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PROBLEMS = "https://meterguard.dev/problems/"

PLANS = """
version: 1
currency: USD
routes:
  - {match: "GET /health", public: true}
  - {match: "GET /v1/posts/search", weight: 1}
  - {match: "GET /v1/posts/archive", weight: 5, plans: [pro]}
plans:
  free:
    rate_limits: ["1000/minute"]
    quotas: {calls: 100, records: 1000}
  pro:
    price: "5000.00"
    rate_limits: ["1000/minute"]
    quotas: {calls: 10, records: 100}
    overage:
      calls: {unit: 1, price: "1.00"}
      records: {unit: 1000, price: "5.00"}
      spend_cap: "2500.00"
  payg:
    price: "0"
    quotas: {records: 0}
    overage:
      records: {unit: 1, price: "0.005"}
customers:
  static-co:
    plan: free
    keys: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
"""

Make = Callable[..., Awaitable[tuple[httpx.AsyncClient, MeterGuard]]]


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2026, 11, 10, 12, 0, 0))


@pytest.fixture
async def make(monkeypatch: pytest.MonkeyPatch, store: Store, clock: Clock) -> AsyncIterator[Make]:
    """A client on the data app wrapped in MeterGuard, the admin API on (MG_ADMIN_TOKEN set)."""
    clients: list[httpx.AsyncClient] = []
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)

    async def factory(plans: str = PLANS, *, with_store: Store | None = None) -> tuple[httpx.AsyncClient, MeterGuard]:
        guard = MeterGuard(data_app, config=parse_config(plans), store=with_store or store, clock=clock)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test")
        clients.append(client)
        return client, guard

    yield factory
    for client in clients:
        await client.aclose()


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["type"] == (kind if kind.startswith("https://") else PROBLEMS + kind)
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


async def new_customer(client: httpx.AsyncClient, customer: str, plan: str = "free", **extra: Any) -> str:
    response = await client.post("/_meterguard/customers", headers=ADMIN, json={"id": customer, "plan": plan, **extra})
    assert response.status_code == 201, response.text
    response = await client.post(f"/_meterguard/customers/{customer}/keys", headers=ADMIN)
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


# ----------------------------------------------------------------------------------------------
# health and authentication
# ----------------------------------------------------------------------------------------------


async def test_health_needs_no_token_and_names_the_store_scheme(make: Make, store: Store) -> None:
    client, _ = await make()
    response = await client.get("/_meterguard/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "store": urlsplit(store.url).scheme}


class DownStore(MemoryStore):
    """A store whose every call fails as an unreachable Redis would."""

    async def ping(self) -> None:
        raise StoreUnavailable("connection refused")

    async def usage(self, customer: str, period_id: str) -> Any:
        raise StoreUnavailable("connection refused")

    async def list_customers(self) -> Any:
        raise StoreUnavailable("connection refused")

    async def get_customer(self, customer: str) -> Any:
        raise StoreUnavailable("connection refused")


@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_health_is_degraded_503_when_the_store_fails(make: Make) -> None:
    client, _ = await make(with_store=DownStore())
    response = await client.get("/_meterguard/health")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded", "store": "unreachable"}


@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_store_errors_are_503_problems_with_retry_after(make: Make) -> None:
    client, _ = await make(with_store=DownStore())
    for path in ("/_meterguard/customers", "/_meterguard/customers/acme/usage"):
        response = await client.get(path, headers=ADMIN)
        assert_problem(response, 503, "store-unavailable")
        assert int(response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"x-api-key": TOKEN},
    ],
    ids=["missing", "wrong", "not-bearer", "longer", "api-key-header"],
)
@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_admin_routes_need_the_bearer_token(make: Make, headers: dict[str, str]) -> None:
    client, _ = await make()
    for method, path in [
        ("GET", "/plans"),
        ("GET", "/customers"),
        ("POST", "/customers"),
        ("DELETE", "/keys/x"),
        ("GET", "/customers/acme/usage"),
        ("GET", "/no-such-route"),
    ]:
        response = await client.request(method, "/_meterguard" + path, headers=headers)
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == 'Bearer realm="meterguard-admin"'


@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_admin_api_is_off_without_the_token_variable(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MG_ADMIN_TOKEN")
    client, guard = await make()
    assert guard.admin is None
    response = await client.get("/_meterguard/customers", headers=ADMIN)
    # Not the admin API: the gateway sees an unknown credential for an ordinary metered path.
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="meterguard"')


@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_unknown_routes_and_methods_are_problems(make: Make) -> None:
    client, _ = await make()
    assert_problem(await client.get("/_meterguard/nope", headers=ADMIN), 404, "not-found")
    response = await client.put("/_meterguard/customers", headers=ADMIN, json={})
    assert_problem(response, 405, "method-not-allowed")
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


# ----------------------------------------------------------------------------------------------
# plans and customers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_plans_lists_the_loaded_plans(make: Make) -> None:
    client, _ = await make()
    response = await client.get("/_meterguard/plans", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["currency"] == "USD"
    assert set(body["plans"]) == {"free", "pro", "payg"}
    pro = body["plans"]["pro"]
    assert pro["price"] == "5000.00"
    assert pro["rate_limits"] == [{"name": "1m", "limit": 1000, "seconds": 60}]
    assert pro["quotas"] == {"calls": 10, "records": 100}
    assert pro["overage"] == {
        "calls": {"unit": 1, "price": "1.00"},
        "records": {"unit": 1000, "price": "5.00"},
        "spend_cap": "2500.00",
    }
    assert body["plans"]["free"]["overage"] == "block"
    assert body["plans"]["payg"]["overage"]["records"] == {"unit": 1, "price": "0.005"}
    assert body["routes"][2] == {"match": "GET /v1/posts/archive", "weight": 5, "plans": ["pro"], "public": False}


async def test_customer_lifecycle(make: Make, unique_customer: Callable[[str], str]) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    response = await client.post("/_meterguard/customers", headers=ADMIN, json={"id": acme, "plan": "free"})
    assert response.status_code == 201
    created = response.json()
    assert created["id"] == acme and created["plan"] == "free" and created["status"] == "active"
    assert created["anchor_day"] == 1
    assert created["created"].endswith("Z")
    assert response.headers["location"] == f"/_meterguard/customers/{acme}"

    assert_problem(
        await client.post("/_meterguard/customers", headers=ADMIN, json={"id": acme, "plan": "pro"}),
        409,
        "customer-exists",
    )
    response = await client.get(f"/_meterguard/customers/{acme}", headers=ADMIN)
    assert response.json() == created

    listed = (await client.get("/_meterguard/customers", headers=ADMIN)).json()["customers"]
    ids = [customer["id"] for customer in listed]
    assert acme in ids and "static-co" in ids  # the plans file's customers are listed too

    response = await client.patch(f"/_meterguard/customers/{acme}", headers=ADMIN, json={"plan": "pro"})
    assert response.status_code == 200
    assert response.json()["plan"] == "pro"
    response = await client.patch(f"/_meterguard/customers/{acme}", headers=ADMIN, json={"status": "suspended"})
    assert response.json()["status"] == "suspended" and response.json()["plan"] == "pro"
    assert (await client.get(f"/_meterguard/customers/{acme}", headers=ADMIN)).json()["status"] == "suspended"

    missing = unique_customer("missing")
    assert_problem(await client.get(f"/_meterguard/customers/{missing}", headers=ADMIN), 404, "customer-not-found")
    assert_problem(
        await client.patch(f"/_meterguard/customers/{missing}", headers=ADMIN, json={"plan": "pro"}),
        404,
        "customer-not-found",
    )


@pytest.mark.parametrize(
    ("body", "status", "kind", "field"),
    [
        (b"{", 400, "invalid-request", None),
        (b"[1, 2]", 400, "invalid-request", None),
        (b'{"plan": "free"}', 422, "invalid-request", "id"),
        (b'{"id": "a{b}", "plan": "free"}', 422, "invalid-request", "id"),
        (b'{"id": "ok-id", "plan": 3}', 422, "invalid-request", "plan"),
        (b'{"id": "ok-id", "plan": "free", "anchor_day": 32}', 422, "invalid-request", "anchor_day"),
        (b'{"id": "ok-id", "plan": "free", "anchor_day": true}', 422, "invalid-request", "anchor_day"),
        (b'{"id": "ok-id", "plan": "free", "colour": "red"}', 422, "invalid-request", "colour"),
        (b'{"id": "ok-id", "plan": "gold"}', 422, "unknown-plan", None),
    ],
    ids=["not-json", "not-object", "no-id", "bad-id", "plan-type", "anchor-range", "anchor-bool", "extra", "plan"],
)
@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_bad_customer_bodies_are_problems(
    make: Make, body: bytes, status: int, kind: str, field: str | None
) -> None:
    client, _ = await make()
    response = await client.post(
        "/_meterguard/customers", headers={**ADMIN, "content-type": "application/json"}, content=body
    )
    problem = assert_problem(response, status, kind)
    if field is not None:
        assert field in [error["field"] for error in problem["errors"]]


@pytest.mark.parametrize(
    "body",
    [{}, {"status": "closed"}, {"plan": 1}, {"plan": "free", "id": "other"}],
    ids=["empty", "bad-status", "plan-type", "extra"],
)
@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_bad_patches_are_422(make: Make, body: dict[str, Any]) -> None:
    client, _ = await make()
    await client.post("/_meterguard/customers", headers=ADMIN, json={"id": "acme", "plan": "free"})
    response = await client.patch("/_meterguard/customers/acme", headers=ADMIN, json=body)
    assert_problem(response, 422, "invalid-request")
    response = await client.patch("/_meterguard/customers/acme", headers=ADMIN, json={"plan": "gold"})
    assert_problem(response, 422, "unknown-plan")


async def test_a_suspension_applies_to_the_very_next_request(make: Make, unique_customer: Callable[[str], str]) -> None:
    """The gateway caches keys for a second; a change made here must not wait for that."""
    client, _ = await make()
    acme = unique_customer("acme")
    key = await new_customer(client, acme)
    assert (await client.get("/v1/posts/search", headers={"x-api-key": key})).status_code == 200
    await client.patch(f"/_meterguard/customers/{acme}", headers=ADMIN, json={"status": "suspended"})
    assert_problem(await client.get("/v1/posts/search", headers={"x-api-key": key}), 403, "customer-suspended")
    await client.patch(f"/_meterguard/customers/{acme}", headers=ADMIN, json={"status": "active"})
    assert (await client.get("/v1/posts/search", headers={"x-api-key": key})).status_code == 200
    # A plan change is an entitlement change at once, too.
    assert (await client.get("/v1/posts/archive", headers={"x-api-key": key})).status_code == 403
    await client.patch(f"/_meterguard/customers/{acme}", headers=ADMIN, json={"plan": "pro"})
    assert (await client.get("/v1/posts/archive", headers={"x-api-key": key})).status_code == 200


async def test_anniversary_customers_get_their_anchor_day(make: Make, unique_customer: Callable[[str], str]) -> None:
    client, _ = await make(PLANS.replace("currency: USD", "currency: USD\nbilling: {anchor: anniversary}"))
    acme = unique_customer("acme")
    response = await client.post(
        "/_meterguard/customers", headers=ADMIN, json={"id": acme, "plan": "free", "anchor_day": 15}
    )
    assert response.json()["anchor_day"] == 15
    usage = (await client.get(f"/_meterguard/customers/{acme}/usage?period=2026-11", headers=ADMIN)).json()
    assert usage["period"] == {"start": "2026-11-15T00:00:00Z", "end": "2026-12-15T00:00:00Z"}
    # The current period (the test clock reads 2026-11-10) is the one that began on Oct 15th.
    usage = (await client.get(f"/_meterguard/customers/{acme}/usage", headers=ADMIN)).json()
    assert usage["period"] == {"start": "2026-10-15T00:00:00Z", "end": "2026-11-15T00:00:00Z"}


# ----------------------------------------------------------------------------------------------
# keys
# ----------------------------------------------------------------------------------------------


async def test_keys_are_shown_once_listed_without_secrets_and_revoked_at_once(
    make: Make, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    await client.post("/_meterguard/customers", headers=ADMIN, json={"id": acme, "plan": "free"})
    response = await client.post(f"/_meterguard/customers/{acme}/keys", headers=ADMIN)
    assert response.status_code == 201
    issued = response.json()
    assert is_well_formed(issued["key"])
    assert issued["key_id"].startswith("key_")
    key = issued["key"]
    assert (await client.get("/v1/posts/search", headers={"x-api-key": key})).status_code == 200

    response = await client.get(f"/_meterguard/customers/{acme}/keys", headers=ADMIN)
    assert response.status_code == 200
    listed = response.json()["keys"]
    assert [entry["key_id"] for entry in listed] == [issued["key_id"]]
    entry = listed[0]
    assert set(entry) >= {"key_id", "prefix", "created", "last_used", "revoked"}
    assert key.startswith(entry["prefix"]) and entry["revoked"] is False
    assert entry["created"].endswith("Z")
    assert key not in response.text and hash_key(key).removeprefix("sha256:") not in response.text

    response = await client.delete(f"/_meterguard/keys/{issued['key_id']}", headers=ADMIN)
    assert response.status_code == 204 and response.content == b""
    # Refused by this process at once (its 1-second cache is cleared), not a second later.
    assert_problem(await client.get("/v1/posts/search", headers={"x-api-key": key}), 401, "unauthenticated")
    listed = (await client.get(f"/_meterguard/customers/{acme}/keys", headers=ADMIN)).json()["keys"]
    assert listed[0]["revoked"] is True

    assert_problem(await client.delete("/_meterguard/keys/key_000000000000", headers=ADMIN), 404, "key-not-found")
    assert_problem(
        await client.post("/_meterguard/customers/nobody-here/keys", headers=ADMIN), 404, "customer-not-found"
    )
    assert_problem(
        await client.get("/_meterguard/customers/nobody-here/keys", headers=ADMIN), 404, "customer-not-found"
    )


# ----------------------------------------------------------------------------------------------
# usage, daily usage, statements
# ----------------------------------------------------------------------------------------------


async def test_usage_document_counts_calls_records_routes_and_keys(
    make: Make, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    key = await new_customer(client, acme)
    for n in (3, 4):
        response = await client.get(f"/v1/posts/search?n={n}", headers={"x-api-key": key})
        assert response.status_code == 200
    await client.get("/v1/other/thing?n=2", headers={"x-api-key": key})

    response = await client.get(f"/_meterguard/customers/{acme}/usage", headers=ADMIN)
    assert response.status_code == 200
    usage = response.json()
    key_id = next(iter(usage["by_key"]))
    assert usage == {
        "customer": acme,
        "plan": "free",
        "period": {"start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
        "calls": {"used": 3, "included": 100, "remaining": 97, "overage": 0},
        "records": {"used": 9, "included": 1000, "remaining": 991, "overage": 0},
        "charges": {"currency": "USD", "base": "0.00", "overage": "0.00", "total": "0.00", "spend_cap": None},
        "rejected": {"rate_limited": 0, "quota": 0, "spend_cap": 0},
        "replays": 0,
        "unmetered": 0,
        "uncounted": 0,
        "by_route": {
            "GET /v1/posts/search": {"calls": 2, "records": 7},
            "GET /v1/other/thing": {"calls": 1, "records": 2},
        },
        "by_key": {key_id: {"calls": 3, "records": 9}},
    }
    same = (await client.get(f"/_meterguard/customers/{acme}/usage?period=2026-11", headers=ADMIN)).json()
    assert same == usage
    other = (await client.get(f"/_meterguard/customers/{acme}/usage?period=2026-10", headers=ADMIN)).json()
    assert other["calls"]["used"] == 0 and other["period"]["start"] == "2026-10-01T00:00:00Z"

    for bad in ("2026-13", "2026-1", "november", "2026-11-01", "+999-01", "2026-\u0661\u0661"):
        response = await client.get(f"/_meterguard/customers/{acme}/usage?period={bad}", headers=ADMIN)
        assert_problem(response, 400, "invalid-request")
    assert_problem(
        await client.get("/_meterguard/customers/nobody-here/usage", headers=ADMIN), 404, "customer-not-found"
    )


async def test_daily_usage_covers_the_days_ending_today(
    make: Make, clock: Clock, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    key = await new_customer(client, acme)
    await client.get("/v1/posts/search?n=5", headers={"x-api-key": key})

    response = await client.get(f"/_meterguard/customers/{acme}/usage/daily?days=3", headers=ADMIN)
    assert response.status_code == 200
    days = response.json()["days"]
    assert [day["day"] for day in days] == ["2026-11-08", "2026-11-09", "2026-11-10"]
    assert days[-1]["calls"] == 1 and days[-1]["records"] == 5
    assert days[-1]["by_route"] == {"GET /v1/posts/search": {"calls": 1, "records": 5}}
    assert days[0]["calls"] == 0

    default = (await client.get(f"/_meterguard/customers/{acme}/usage/daily", headers=ADMIN)).json()["days"]
    assert len(default) == 30 and default[-1]["day"] == "2026-11-10"
    assert (
        len((await client.get(f"/_meterguard/customers/{acme}/usage/daily?days=90", headers=ADMIN)).json()["days"])
        == 90
    )
    for bad in ("0", "91", "-1", "x", "1.5"):
        response = await client.get(f"/_meterguard/customers/{acme}/usage/daily?days={bad}", headers=ADMIN)
        assert_problem(response, 400, "invalid-request")


async def test_statement_lines_agree_with_the_usage_charges(make: Make, unique_customer: Callable[[str], str]) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    key = await new_customer(client, acme, plan="pro")
    for _ in range(12):  # 10 included calls, then 2 billed at 1.00 each
        response = await client.get("/v1/posts/search?n=25", headers={"x-api-key": key})
        assert response.status_code == 200
    # 300 records: 200 past the 100 included, at 5.00 per 1000 = 1.00

    statement = (await client.get(f"/_meterguard/customers/{acme}/statement?period=2026-11", headers=ADMIN)).json()
    assert statement == {
        "customer": acme,
        "plan": "pro",
        "period": {"id": "2026-11", "start": "2026-11-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"},
        "currency": "USD",
        "base": "5000.00",
        "lines": [
            {
                "meter": "calls",
                "tier": 1,
                "up_to": None,
                "included": 10,
                "used": 12,
                "units": 2,
                "unit": 1,
                "price": "1.00",
                "amount": "2.00",
            },
            {
                "meter": "records",
                "tier": 1,
                "up_to": None,
                "included": 100,
                "used": 300,
                "units": 200,
                "unit": 1000,
                "price": "5.00",
                "amount": "1.00",
            },
        ],
        "overage": "3.00",
        "total": "5003.00",
        "spend_cap": "2500.00",
    }
    usage = (await client.get(f"/_meterguard/customers/{acme}/usage", headers=ADMIN)).json()
    assert usage["charges"]["total"] == statement["total"]
    assert usage["charges"]["overage"] == statement["overage"]
    current = (await client.get(f"/_meterguard/customers/{acme}/statement", headers=ADMIN)).json()
    assert current == statement
    assert_problem(
        await client.get(f"/_meterguard/customers/{acme}/statement?period=26-11", headers=ADMIN),
        400,
        "invalid-request",
    )


async def test_statement_rounds_fractional_cent_prices_half_up(
    make: Make, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("payg")
    key = await new_customer(client, acme, plan="payg")
    await client.get("/v1/posts/search?n=3", headers={"x-api-key": key})  # 3 x 0.005 = 0.015 -> 0.02
    statement = (await client.get(f"/_meterguard/customers/{acme}/statement", headers=ADMIN)).json()
    assert statement["lines"] == [
        {
            "meter": "records",
            "tier": 1,
            "up_to": None,
            "included": 0,
            "used": 3,
            "units": 3,
            "unit": 1,
            "price": "0.005",
            "amount": "0.02",
        }
    ]
    assert statement["total"] == "0.02" and statement["base"] == "0.00"
    usage = (await client.get(f"/_meterguard/customers/{acme}/usage", headers=ADMIN)).json()
    assert usage["charges"]["total"] == "0.02"


# ----------------------------------------------------------------------------------------------
# /me/usage
# ----------------------------------------------------------------------------------------------


async def test_me_usage_takes_the_customers_own_key(make: Make, unique_customer: Callable[[str], str]) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    key = await new_customer(client, acme)
    await client.get("/v1/posts/search?n=2", headers={"x-api-key": key})

    mine = await client.get("/_meterguard/me/usage", headers={"x-api-key": key})
    assert mine.status_code == 200
    assert mine.headers["cache-control"] == "no-store"
    admin_view = (await client.get(f"/_meterguard/customers/{acme}/usage", headers=ADMIN)).json()
    assert mine.json() == admin_view
    assert mine.json()["calls"]["used"] == 1  # reading your usage is not a metered call
    bearer = await client.get("/_meterguard/me/usage", headers={"Authorization": f"Bearer {key}"})
    assert bearer.json() == admin_view

    for headers in (
        {},
        {"x-api-key": key[:-1] + ("x" if key[-1] != "x" else "y")},
        {"x-api-key": "mg_live_short"},
        ADMIN,
    ):
        response = await client.get("/_meterguard/me/usage", headers=headers)
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].startswith('Bearer realm="meterguard"')

    await client.patch(f"/_meterguard/customers/{acme}", headers=ADMIN, json={"status": "suspended"})
    assert_problem(await client.get("/_meterguard/me/usage", headers={"x-api-key": key}), 403, "customer-suspended")


# ----------------------------------------------------------------------------------------------
# standalone
# ----------------------------------------------------------------------------------------------


async def test_standalone_admin_app(monkeypatch: pytest.MonkeyPatch, store: Store) -> None:
    monkeypatch.delenv("MG_ADMIN_TOKEN", raising=False)
    config = parse_config(PLANS)
    with pytest.raises(ConfigError, match="MG_ADMIN_TOKEN"):
        create_admin_app(config, store)
    app = create_admin_app(config, store, token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as client:
        assert (await client.get("/health")).json()["status"] == "ok"
        assert_problem(await client.get("/customers"), 401, "unauthenticated")
        listed = await client.get("/customers", headers=ADMIN)
        assert listed.status_code == 200 and "static-co" in listed.text

    # Served under a root path the way uvicorn --root-path does: root_path stays inside path.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, root_path="/admin"), base_url="http://admin.test"
    ) as client:
        response = await client.get("/admin/plans", headers=ADMIN)
        assert response.status_code == 200 and "free" in response.json()["plans"]


async def test_standalone_admin_app_reads_the_token_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    app = create_admin_app(parse_config(PLANS), "memory://")
    async with app.app.router.lifespan_context(app.app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin.test") as client:
            assert (await client.get("/plans", headers=ADMIN)).status_code == 200
