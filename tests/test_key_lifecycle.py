"""Key expiry and rotation (issue 9), through the admin API and the CLI, on every store.

Expiry is time-based: a gateway refuses a key from its expires_at on, whatever it has cached and
whether or not it heard of the change, so these tests move the clock rather than send events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from meterguard import MeterGuard, cli, parse_config
from meterguard.keys import is_well_formed
from meterguard.store.base import Store
from meterguard.store.cluster import RedisClusterStore
from meterguard.store.memory import MemoryStore
from meterguard.store.redis import RedisStore

from .conftest import CLUSTER_URL, REDIS_URL, drop_keys
from .support import Clock, data_app, utc

TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PROBLEMS = "https://meterguard.dev/problems/"
PLANS = """
version: 1
plans:
  free: {rate_limits: ["1000/minute"]}
customers:
  static-co:
    plan: free
    keys: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
"""
NOW = utc(2026, 11, 10, 12, 0, 0)
HOUR = 3600.0

Make = Callable[..., Awaitable[tuple[httpx.AsyncClient, MeterGuard]]]


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
async def make(monkeypatch: pytest.MonkeyPatch, store: Store, clock: Clock) -> AsyncIterator[Make]:
    """``make()``: a gateway (admin API on) on this test's store and clock; call it twice for two processes."""
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    clients: list[httpx.AsyncClient] = []

    async def factory(with_store: Store | None = None) -> tuple[httpx.AsyncClient, MeterGuard]:
        guard = MeterGuard(data_app, config=parse_config(PLANS), store=with_store or store, clock=clock)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test")
        clients.append(client)
        return client, guard

    yield factory
    for client in clients:
        await client.aclose()


async def create_customer(client: httpx.AsyncClient, name: str) -> None:
    response = await client.post("/_meterguard/customers", headers=ADMIN, json={"id": name, "plan": "free"})
    assert response.status_code == 201, response.text


async def get(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.get("/v1/posts/1", headers={"x-api-key": key})


def assert_expired(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["detail"] == "The API key has expired."


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_key_with_an_expiry_works_until_then_and_not_a_second_after(
    make: Make, clock: Clock, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    await create_customer(client, acme)
    expires = clock.now + 2 * HOUR
    response = await client.post(
        f"/_meterguard/customers/{acme}/keys", headers=ADMIN, json={"expires_at": rfc3339(expires)}
    )
    assert response.status_code == 201, response.text
    issued = response.json()
    assert is_well_formed(issued["key"])
    assert (issued["expires_at"], issued["state"]) == (rfc3339(expires), "expiring")  # within 7 days
    assert (await get(client, issued["key"])).status_code == 200
    clock.set(datetime.fromtimestamp(expires - 1, UTC))
    assert (await get(client, issued["key"])).status_code == 200  # cached now, for up to 30 s of monotonic time
    clock.advance(1)  # the second it expires: refused, cache or no cache
    assert_expired(await get(client, issued["key"]))
    listed = (await client.get(f"/_meterguard/customers/{acme}/keys", headers=ADMIN)).json()["keys"]
    assert [(k["key_id"], k["state"], k["expires_at"]) for k in listed] == [
        (issued["key_id"], "expired", rfc3339(expires))
    ]


async def test_another_gateway_refuses_an_expired_key_without_hearing_of_it(
    make: Make, clock: Clock, store: Store, unique_customer: Callable[[str], str]
) -> None:
    """Gateway B caches the key, then the key is rotated on A with a grace of an hour. B gets no
    change event here (its change listener is cut off) and still refuses the key once the grace
    ends: its cached lookup ended at the expiry it read. The store is shared, as in production."""
    client_a, _ = await make()
    client_b, guard_b = await make()
    guard_b._on_change = lambda event: None  # type: ignore[method-assign]
    acme = unique_customer("acme")
    await create_customer(client_a, acme)
    old = (await client_a.post(f"/_meterguard/customers/{acme}/keys", headers=ADMIN)).json()
    assert (await get(client_b, old["key"])).status_code == 200
    guard_b.authenticator.ttl = 3600  # as if subscribed to change events: the longest a lookup is kept
    assert (await get(client_b, old["key"])).status_code == 200
    rotated = await client_a.post(f"/_meterguard/keys/{old['key_id']}/rotate", headers=ADMIN, json={"grace": "1h"})
    assert rotated.status_code == 201, rotated.text
    # B's cache entry from before the rotation ended nowhere; the next lookup reads the new expiry
    guard_b.authenticator.invalidate()
    assert (await get(client_b, old["key"])).status_code == 200  # within the grace; now cached with its expiry
    clock.advance(HOUR)
    assert_expired(await get(client_b, old["key"]))
    assert (await get(client_b, rotated.json()["key"])).status_code == 200


async def test_rotation_new_key_at_once_old_key_until_the_grace_ends(
    make: Make, clock: Clock, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    await create_customer(client, acme)
    old = (await client.post(f"/_meterguard/customers/{acme}/keys", headers=ADMIN)).json()
    assert (await get(client, old["key"])).status_code == 200
    response = await client.post(f"/_meterguard/keys/{old['key_id']}/rotate", headers=ADMIN, json={"grace": "24h"})
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    new = response.json()
    assert is_well_formed(new["key"]) and new["key"] != old["key"]
    assert (new["customer"], new["state"], new["expires_at"]) == (acme, "active", None)
    assert new["replaces"]["key_id"] == old["key_id"]
    assert new["replaces"]["expires_at"] == rfc3339(clock.now + 24 * HOUR)
    assert (new["replaces"]["state"], new["replaces"]["replaced_by"]) == ("expiring", new["key_id"])
    assert (await get(client, new["key"])).status_code == 200
    assert (await get(client, old["key"])).status_code == 200
    clock.advance(24 * HOUR - 1)
    assert (await get(client, old["key"])).status_code == 200
    clock.advance(1)
    assert_expired(await get(client, old["key"]))
    assert (await get(client, new["key"])).status_code == 200
    listed = (await client.get(f"/_meterguard/customers/{acme}/keys", headers=ADMIN)).json()["keys"]
    states = {entry["key_id"]: (entry["state"], entry["replaced_by"]) for entry in listed}
    assert states == {old["key_id"]: ("expired", new["key_id"]), new["key_id"]: ("active", None)}
    # usage is counted under each key that was used
    usage = (await client.get(f"/_meterguard/customers/{acme}/usage", headers=ADMIN)).json()
    assert set(usage["by_key"]) == {old["key_id"], new["key_id"]}


async def test_rotation_without_grace_refuses_the_old_key_at_once(
    make: Make, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    await create_customer(client, acme)
    old = (await client.post(f"/_meterguard/customers/{acme}/keys", headers=ADMIN)).json()
    assert (await get(client, old["key"])).status_code == 200
    new = (await client.post(f"/_meterguard/keys/{old['key_id']}/rotate", headers=ADMIN, json={"grace": "0"})).json()
    assert_expired(await get(client, old["key"]))
    assert (await get(client, new["key"])).status_code == 200
    # and the default grace, with no body at all, is a day
    again = await client.post(f"/_meterguard/keys/{new['key_id']}/rotate", headers=ADMIN)
    assert again.status_code == 201
    assert again.json()["replaces"]["state"] == "expiring"


async def test_key_states_active_expiring_expired_revoked(
    make: Make, clock: Clock, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    await create_customer(client, acme)
    url = f"/_meterguard/customers/{acme}/keys"
    forever = (await client.post(url, headers=ADMIN)).json()
    in_a_month = (await client.post(url, headers=ADMIN, json={"expires_at": rfc3339(clock.now + 30 * 86400)})).json()
    in_a_day = (await client.post(url, headers=ADMIN, json={"expires_at": rfc3339(clock.now + 86400)})).json()
    soon = (await client.post(url, headers=ADMIN, json={"expires_at": rfc3339(clock.now + 60)})).json()
    revoked = (await client.post(url, headers=ADMIN)).json()
    assert (await client.delete(f"/_meterguard/keys/{revoked['key_id']}", headers=ADMIN)).status_code == 204
    clock.advance(61)
    listed = (await client.get(url, headers=ADMIN)).json()["keys"]
    assert {entry["key_id"]: entry["state"] for entry in listed} == {
        forever["key_id"]: "active",
        in_a_month["key_id"]: "active",  # "expiring" only within the last 7 days
        in_a_day["key_id"]: "expiring",
        soon["key_id"]: "expired",
        revoked["key_id"]: "revoked",
    }
    assert all(entry["key_id"] and "key" not in entry for entry in listed)


@pytest.mark.parametrize("store", ["memory"], indirect=True)
async def test_bad_expiry_and_rotation_requests_are_problems(
    make: Make, clock: Clock, unique_customer: Callable[[str], str]
) -> None:
    client, _ = await make()
    acme = unique_customer("acme")
    await create_customer(client, acme)
    url = f"/_meterguard/customers/{acme}/keys"
    for body in (
        {"expires_at": rfc3339(clock.now - 1)},  # in the past
        {"expires_at": "2027-01-01"},  # no time, no offset
        {"expires_at": "2027-01-01T00:00:00"},  # no offset: which instant?
        {"expires_at": 1798761600},  # a number, not RFC 3339
        {"expires_at": "9999-12-31T23:59:59Z"},  # more than a century away
        {"expires": "30d"},  # unknown field
    ):
        response = await client.post(url, headers=ADMIN, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    key = (await client.post(url, headers=ADMIN)).json()
    rotate = f"/_meterguard/keys/{key['key_id']}/rotate"
    for body in ({"grace": "forever"}, {"grace": 3600}, {"grace": "91d"}, {"grace": "-1h"}, {"grace": "1h", "x": 1}):
        response = await client.post(rotate, headers=ADMIN, json=body)
        assert response.status_code == 422, (body, response.text)
    response = await client.post("/_meterguard/keys/key_000000000000/rotate", headers=ADMIN, json={"grace": "1h"})
    assert (response.status_code, response.json()["type"]) == (404, PROBLEMS + "key-not-found")
    static = "key_" + "0" * 12
    response = await client.post(f"/_meterguard/keys/{static}/rotate", headers=ADMIN)
    assert (response.status_code, response.json()["type"]) == (404, PROBLEMS + "key-not-found")
    assert "plans.yaml" in response.json()["detail"]
    await client.delete(f"/_meterguard/keys/{key['key_id']}", headers=ADMIN)
    response = await client.post(rotate, headers=ADMIN, json={"grace": "1h"})
    assert (response.status_code, response.json()["type"]) == (409, PROBLEMS + "key-not-active")
    listed = (await client.get(url, headers=ADMIN)).json()["keys"]
    assert len(listed) == 1  # no request above issued a key


# -- the CLI -----------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "cluster"])
def cli_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, key_prefix: str) -> Iterator[str]:
    memory = MemoryStore()
    url = {"memory": "memory://", "redis": REDIS_URL, "cluster": CLUSTER_URL}[request.param]

    def open_store(opened: str) -> Store:
        if request.param == "memory":
            return memory
        if request.param == "redis":
            return RedisStore(opened, key_prefix=key_prefix)
        return RedisClusterStore(opened, key_prefix=key_prefix)

    monkeypatch.setattr(cli, "_open_store", open_store)
    for name in ("MG_STORE", "MG_CONFIG", "MG_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    yield url
    if request.param != "memory":
        import asyncio

        asyncio.run(drop_keys(url, key_prefix))


def test_keys_create_rotate_and_list_through_the_cli(cli_store: str, tmp_path: Path) -> None:
    plans = tmp_path / "plans.yaml"
    plans.write_text(PLANS)
    state = ["--config", str(plans), "--store", cli_store]
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(cli.main, [*args, *state], catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    assert run("customers", "create", "acme", "--plan", "free").exit_code == 0
    dated = run("keys", "create", "acme", "--expires", "2099-01-01T00:00:00Z")
    assert dated.exit_code == 0 and is_well_formed(dated.stdout.strip())
    assert "works until 2099-01-01T00:00:00Z" in dated.stderr
    monthly = run("keys", "create", "acme", "--expires", "30d")
    assert monthly.exit_code == 0
    plain = run("keys", "create", "acme")
    listed = json.loads(run("keys", "list", "acme", "--json").stdout)["keys"]
    assert [entry["state"] for entry in listed] == ["active", "active", "active"]
    assert listed[0]["expires_at"] == "2099-01-01T00:00:00Z" and listed[2]["expires_at"] is None

    rotated = run("keys", "rotate", listed[2]["key_id"], "--grace", "2h")
    assert rotated.exit_code == 0, rotated.output
    new_key = rotated.stdout.strip()
    assert is_well_formed(new_key) and new_key != plain.stdout.strip()
    assert f"replaces {listed[2]['key_id']}, which works until" in rotated.stderr
    table = run("keys", "list", "acme").stdout.splitlines()
    assert table[0].split() == ["KEY_ID", "PREFIX", "CREATED", "LAST_USED", "EXPIRES", "STATE"]
    assert len(table) == 5
    assert any(line.split()[0] == listed[2]["key_id"] and line.split()[-1] == "expiring" for line in table)

    for args in (
        ("keys", "create", "acme", "--expires", "tomorrow"),
        ("keys", "create", "acme", "--expires", "2001-01-01T00:00:00Z"),
        ("keys", "rotate", listed[0]["key_id"], "--grace", "forever"),
    ):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1].startswith("Error: Invalid value for --")
    assert run("keys", "revoke", listed[0]["key_id"]).exit_code == 0
    refused = run("keys", "rotate", listed[0]["key_id"])
    assert refused.exit_code == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        f"meterguard: {listed[0]['key_id']} is revoked: issue a new key instead of rotating it"
    )
    unknown = run("keys", "rotate", "key_000000000001")
    assert unknown.exit_code == 1 and unknown.stderr.strip().splitlines()[-1] == "meterguard: no key 'key_000000000001'"
