"""Failed authentications per client address (_throttle.py, CONTRACT 11): 429 past auth.failed_limit."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from meterguard import MeterGuard, parse_config
from meterguard._throttle import FailedAuthThrottle
from meterguard.keys import generate_key
from meterguard.store.memory import MemoryStore

from .support import SEEN, data_app

TOKEN = "test-admin-token-0123456789"
THROTTLED = "https://meterguard.dev/problems/too-many-failed-authentications"


def plans(limit: str = "5/minute", extra: str = "") -> str:
    return f"""
version: 1
auth:
  failed_limit: {limit}
{extra}
routes:
  - {{match: "GET /health", public: true}}
plans:
  free: {{rate_limits: ["1000/minute"]}}
"""


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def find_key(self, key_hash: str) -> Any:
        self.lookups += 1
        return await super().find_key(key_hash)


Client = Callable[[str], httpx.AsyncClient]


@pytest.fixture
async def gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Callable[..., Awaitable[tuple[Client, MeterGuard]]]]:
    """``make(plans)`` -> (``client(address)``, guard): one gateway, clients from any address."""
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    opened: list[httpx.AsyncClient] = []

    async def make(text: str = plans(), store: Any = None) -> tuple[Client, MeterGuard]:
        guard = MeterGuard(data_app, config=parse_config(text), store=store or CountingStore())

        def client(address: str = "192.0.2.10") -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=guard, client=(address, 40000))
            opened.append(httpx.AsyncClient(transport=transport, base_url="http://t"))
            return opened[-1]

        return client, guard

    yield make
    for client in opened:
        await client.aclose()


async def new_customer(guard: MeterGuard, name: str) -> str:
    await guard.directory.create(name, "free")
    return (await guard.directory.issue_key(name))[1]


def assert_throttled(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert (body["type"], body["status"]) == (THROTTLED, 429)
    retry = int(response.headers["retry-after"])
    assert 1 <= retry <= 60
    return retry


async def test_past_the_default_limit_a_guess_is_429_and_costs_no_lookup(gateway: Any) -> None:
    """Before (18c8b91): 100,017 failures from one address, not one 429; each guess a store lookup."""
    client, guard = await gateway(plans("60/minute"))
    store: CountingStore = guard.store  # type: ignore[assignment]
    attacker = client("198.51.100.7")
    for _ in range(60):  # unknown keys with a valid checksum: each needs a store lookup
        assert (await attacker.get("/v1/posts/1", headers={"x-api-key": generate_key()})).status_code == 401
    assert store.lookups == 60
    SEEN.clear()
    for _ in range(20):
        assert_throttled(await attacker.get("/v1/posts/1", headers={"x-api-key": generate_key()}))
    assert store.lookups == 60  # a throttled guess reaches neither the store nor the app
    assert SEEN == []


async def test_a_key_known_good_here_keeps_working_from_a_blocked_address(gateway: Any) -> None:
    client, guard = await gateway()
    store: CountingStore = guard.store  # type: ignore[assignment]
    office = client("203.0.113.5")  # one NAT address: a customer's app and someone guessing behind it
    good = await new_customer(guard, "acme")
    assert (await office.get("/v1/posts/1", headers={"x-api-key": good})).status_code == 200
    for _ in range(5):
        assert (await office.get("/v1/posts/1", headers={"x-api-key": generate_key()})).status_code == 401
    assert_throttled(await office.get("/v1/posts/1", headers={"x-api-key": generate_key()}))
    for _ in range(3):
        assert (await office.get("/v1/posts/1", headers={"x-api-key": good})).status_code == 200
        assert (await office.get("/v1/posts/1", headers={"authorization": f"Bearer {good}"})).status_code == 200
    # A real key this process has not seen succeed is not known good: no lookup, 429.
    unseen = await new_customer(guard, "globex")
    lookups = store.lookups
    assert_throttled(await office.get("/v1/posts/1", headers={"x-api-key": unseen}))
    assert store.lookups == lookups


async def test_a_known_good_key_that_is_revoked_stops_being_known_good(gateway: Any) -> None:
    client, guard = await gateway()
    office = client("203.0.113.5")
    await guard.directory.create("acme", "free")
    record, good = await guard.directory.issue_key("acme")
    assert (await office.get("/v1/posts/1", headers={"x-api-key": good})).status_code == 200
    for _ in range(5):
        await office.get("/v1/posts/1", headers={"x-api-key": generate_key()})
    await guard.directory.revoke_key(record.key_id)
    guard.authenticator.invalidate()
    assert (await office.get("/v1/posts/1", headers={"x-api-key": good})).status_code == 401
    assert_throttled(await office.get("/v1/posts/1", headers={"x-api-key": good}))


async def test_every_kind_of_failure_counts_and_no_credential_does_not(gateway: Any) -> None:
    client, guard = await gateway()
    attacker = client()
    key = await new_customer(guard, "acme")
    failures = [
        {"x-api-key": "not-a-key"},  # no store lookup, still a failed authentication
        {"x-api-key": "mg_live_" + "A" * 38},  # bad checksum
        {"x-api-key": "x" * 5000},  # too large
        {"authorization": f"Bearer {key}", "x-api-key": generate_key()},  # ambiguous
    ]
    for headers in failures:
        assert (await attacker.get("/v1/posts/1", headers=headers)).status_code == 401
    for _ in range(10):  # a request with no credential tried nothing: never counted, always 401
        assert (await attacker.get("/v1/posts/1")).status_code == 401
    assert (await attacker.get("/v1/posts/1", headers={"x-api-key": "still-not-a-key"})).status_code == 401
    assert_throttled(await attacker.get("/v1/posts/1", headers={"x-api-key": "again"}))
    assert (await attacker.get("/health")).status_code == 200  # public routes are not behind it


async def test_addresses_are_counted_apart(gateway: Any) -> None:
    client, _ = await gateway()
    attacker, bystander = client("198.51.100.7"), client("198.51.100.8")
    for _ in range(5):
        await attacker.get("/v1/posts/1", headers={"x-api-key": "nope"})
    assert_throttled(await attacker.get("/v1/posts/1", headers={"x-api-key": "nope"}))
    assert (await bystander.get("/v1/posts/1", headers={"x-api-key": "nope"})).status_code == 401


async def test_the_block_lifts_when_the_window_has_room(gateway: Any) -> None:
    client, _ = await gateway(plans('"2 per 2 seconds"'))
    attacker = client()
    for _ in range(2):
        await attacker.get("/v1/posts/1", headers={"x-api-key": "nope"})
    retry = assert_throttled(await attacker.get("/v1/posts/1", headers={"x-api-key": "nope"}))
    assert retry <= 2
    await asyncio.sleep(2.1)
    assert (await attacker.get("/v1/posts/1", headers={"x-api-key": "nope"})).status_code == 401


async def test_null_turns_the_throttle_off(gateway: Any) -> None:
    client, _ = await gateway(plans("null"))
    attacker = client()
    for _ in range(100):
        assert (await attacker.get("/v1/posts/1", headers={"x-api-key": "nope"})).status_code == 401


async def test_wrong_admin_tokens_count_and_the_right_one_still_works(gateway: Any) -> None:
    client, guard = await gateway()
    operator = client("10.1.2.3")
    for _ in range(5):
        response = await operator.get("/_meterguard/customers", headers={"authorization": "Bearer guess"})
        assert response.status_code == 401
    assert_throttled(await operator.get("/_meterguard/customers", headers={"authorization": "Bearer guess"}))
    # the API keys from that address are behind the same count
    assert_throttled(await operator.get("/v1/posts/1", headers={"x-api-key": generate_key()}))
    response = await operator.get("/_meterguard/customers", headers={"authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert (await operator.get("/_meterguard/health")).status_code == 200


async def test_me_usage_is_behind_the_throttle(gateway: Any) -> None:
    client, guard = await gateway()
    attacker = client()
    for _ in range(5):
        assert (await attacker.get("/_meterguard/me/usage", headers={"x-api-key": generate_key()})).status_code == 401
    assert_throttled(await attacker.get("/_meterguard/me/usage", headers={"x-api-key": generate_key()}))


async def test_x_forwarded_for_is_believed_from_trusted_proxies_only(gateway: Any) -> None:
    client, _ = await gateway(plans(extra='  trusted_proxies: ["10.0.0.0/8"]'))
    proxy, stranger = client("10.0.0.2"), client("198.51.100.7")
    for index in range(5):
        # Behind the proxy each client counts on its own, whatever it puts left of its address.
        headers = {"x-api-key": "nope", "x-forwarded-for": f"1.1.1.{index}, 203.0.113.9"}
        assert (await proxy.get("/v1/posts/1", headers=headers)).status_code == 401
    assert_throttled(await proxy.get("/v1/posts/1", headers={"x-api-key": "no", "x-forwarded-for": "203.0.113.9"}))
    assert (
        await proxy.get("/v1/posts/1", headers={"x-api-key": "no", "x-forwarded-for": "203.0.113.10"})
    ).status_code == 401
    # A client that is not a trusted proxy cannot pick the address it is counted under.
    for index in range(5):
        await stranger.get("/v1/posts/1", headers={"x-api-key": "no", "x-forwarded-for": f"192.0.2.{index}"})
    assert_throttled(await stranger.get("/v1/posts/1", headers={"x-api-key": "no", "x-forwarded-for": "192.0.2.99"}))


# -- the client address -------------------------------------------------------------------------------


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "client": (peer, 1234) if peer is not None else None,
        "headers": [(b"x-forwarded-for", value.encode()) for value in forwarded],
    }


TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("request_scope", "address"),
    [
        (scope("198.51.100.7"), "198.51.100.7"),
        (scope("198.51.100.7", "203.0.113.9"), "198.51.100.7"),  # not from a trusted proxy: ignored
        (scope("10.0.0.2", "203.0.113.9"), "203.0.113.9"),
        (scope("10.0.0.2", "6.6.6.6, 203.0.113.9"), "203.0.113.9"),  # the client's own part is not believed
        (scope("10.0.0.2", "6.6.6.6", "203.0.113.9, 10.0.0.3"), "203.0.113.9"),  # two fields, two proxies
        (scope("10.0.0.2", "10.0.0.5, 10.0.0.3"), "10.0.0.5"),  # every hop trusted: the leftmost
        (scope("10.0.0.2", "not-an-ip"), "10.0.0.2"),  # a hop a proxy wrote that is no address: the proxy
        (scope("10.0.0.2"), "10.0.0.2"),
        (scope("10.0.0.2", "203.0.113.9:4711"), "203.0.113.9"),
        (scope("10.0.0.2", "[2001:db8::1]:443"), "2001:db8::/64"),
        (scope("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64"),  # IPv6 clients count per /64
        (scope("::ffff:198.51.100.7"), "198.51.100.7"),
        (scope(None), "unknown"),
        (scope("testclient"), "testclient"),
    ],
)
def test_the_address_a_request_is_counted_under(request_scope: dict[str, Any], address: str) -> None:
    assert FailedAuthThrottle("60/minute", TRUSTED).address(request_scope) == address


def test_a_long_forwarded_chain_is_read_from_the_right_only() -> None:
    chain = ", ".join(["10.0.0.9"] * 10_000 + ["203.0.113.9"] + ["10.0.0.8"] * 3)
    assert FailedAuthThrottle("60/minute", TRUSTED).address(scope("10.0.0.2", chain)) == "203.0.113.9"
    everything_trusted = ", ".join(["10.0.0.9"] * 10_000)
    assert FailedAuthThrottle("60/minute", TRUSTED).address(scope("10.0.0.2", everything_trusted)) == "10.0.0.9"


def test_blocked_addresses_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from meterguard import _throttle

    monkeypatch.setattr(_throttle, "MAX_BLOCKED", 50)
    throttle = FailedAuthThrottle("1/minute")
    for index in range(200):
        throttle.failed(f"198.51.100.{index}")
    assert len(throttle.blocked) <= 50
    assert throttle.wait("198.51.100.199") > 0  # the newest blocks are the ones kept
