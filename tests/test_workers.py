"""Exactness across processes: 4 real uvicorn workers on one Redis, 64 clients at once.

Every test here opens 64 keep-alive connections first and then writes one request on each at
the same moment (tests/wave.py), wave after wave, spread over several keys of one customer.
Proven to fail: with RedisStore.admit changed to read the period's calls in one round trip and
admit in a second, the calls test saw {200: 128, 429: 64} instead of {200: 100, 429: 92}.
tests/store/test_concurrency.py keeps such a broken store as a standing control.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meterguard import parse_config
from meterguard.customers import Directory
from meterguard.lease import FLUSH_INTERVAL_SECONDS, LEASE_SECONDS, TURN_DELAY_SECONDS
from meterguard.periods import period_for
from meterguard.store import store_from_url

from .conftest import REDIS_URL, drop_keys
from .wave import Gateway, Reply, connect, wave

ADMIN_TOKEN = "workers-test-token"
CLIENTS = 64
PLANS = """
version: 1
routes:
  - {match: "GET /health", public: true}
plans:
  calls:
    quotas: {calls: 100}
  window:
    rate_limits: ["40/day"]
  records:
    quotas: {records: 300}
"""


@dataclass
class Deployment:
    url: str
    config: Path
    directory: Directory
    consistency: str

    async def settled(self, customer: str) -> None:
        """In fast mode usage reaches the store within the flush interval: wait until it stops moving."""
        if self.consistency != "fast":
            return
        loop = asyncio.get_running_loop()
        deadline, last = loop.time() + 15, None
        period = period_for(time.time()).id
        while loop.time() < deadline:
            await asyncio.sleep(FLUSH_INTERVAL_SECONDS + TURN_DELAY_SECONDS + 0.2)
            usage = await self.directory.store.usage(customer, period)
            if (usage.calls, usage.records) == last:
                return
            last = (usage.calls, usage.records)
        raise AssertionError("usage still moving after 15 s")

    async def refill(self, port: int, keys: list[str], replies: list[Reply], until: int) -> None:
        """Fast mode: units leased to other processes may refuse a request early, never late; once
        leases are given back (expiry, then the next flush) the rest of the budget is served."""
        if self.consistency != "fast":
            return
        for _ in range(10):
            if statuses(replies).get(200, 0) >= until:
                return
            await asyncio.sleep(LEASE_SECONDS + FLUSH_INTERVAL_SECONDS + 0.1)
            replies += await fire(port, keys, "/v1/posts/1?n=0", waves=1)

    async def customer(self, plan: str, keys: int = 4) -> tuple[str, list[str]]:
        name = f"{plan}-{uuid.uuid4().hex[:8]}"
        await self.directory.create(name, plan)
        return name, [(await self.directory.issue_key(name))[1] for _ in range(keys)]


@pytest.fixture(params=["exact", "fast"])
async def deployment(request: pytest.FixtureRequest, tmp_path: Path, key_prefix: str) -> AsyncIterator[Deployment]:
    url = f"{REDIS_URL}?prefix={key_prefix}"
    config = tmp_path / "plans.yaml"
    plans = PLANS.replace("version: 1", f"version: 1\nconsistency: {request.param}")
    config.write_text(plans)
    store = store_from_url(url)
    try:
        yield Deployment(url, config, Directory(parse_config(plans), store), request.param)
    finally:
        await store.aclose()
        await drop_keys(REDIS_URL, key_prefix)


@pytest.fixture
def gateway(deployment: Deployment) -> Iterator[Gateway]:
    with Gateway("tests.support:data_app", deployment.config, deployment.url, workers=4,
                 env={"MG_ADMIN_TOKEN": ADMIN_TOKEN}) as running:  # fmt: skip
        yield running


async def fire(port: int, keys: list[str], path: str, waves: int) -> list[Reply]:
    connections = await connect(port, CLIENTS)
    replies: list[Reply] = []
    try:
        for _ in range(waves):
            requests = [(path, {"x-api-key": keys[i % len(keys)]}) for i in range(CLIENTS)]
            replies += await wave(connections, requests)
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))
    return replies


async def usage(port: int, customer: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get(
            f"/_meterguard/customers/{customer}/usage", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]


def statuses(replies: list[Reply]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for reply in replies:
        counts[reply.status] = counts.get(reply.status, 0) + 1
    return counts


async def test_calls_quota_admits_exactly_q_across_workers_and_survives_a_restart(
    deployment: Deployment, gateway: Gateway
) -> None:
    customer, keys = await deployment.customer("calls")
    replies = await fire(gateway.port, keys, "/v1/posts/1?n=0", waves=3)
    await deployment.refill(gateway.port, keys, replies, until=100)
    admitted = statuses(replies).get(200, 0)
    assert admitted == 100
    assert statuses(replies)[429] == len(replies) - 100
    for reply in replies:
        if reply.status == 429:
            body = reply.json()
            assert (body["scope"], body["violated-policies"]) == ("period", ["calls-period"])
    await deployment.settled(customer)
    document = await usage(gateway.port, customer)
    assert document["calls"]["used"] == admitted  # type: ignore[index]
    assert document["rejected"]["quota"] >= 1  # type: ignore[index]
    assert sum(entry["calls"] for entry in document["by_key"].values()) == admitted  # type: ignore[attr-defined]
    assert len(document["by_key"]) == 4  # type: ignore[arg-type]

    # Restarting every gateway process keeps every counter: the state lives in Redis.
    gateway.stop()
    gateway.start()
    assert (await usage(gateway.port, customer))["calls"]["used"] == admitted  # type: ignore[index]
    again = await fire(gateway.port, keys, "/v1/posts/1?n=0", waves=1)
    assert statuses(again) == {429: CLIENTS}


async def test_rate_window_admits_exactly_its_limit_across_workers(deployment: Deployment, gateway: Gateway) -> None:
    customer, keys = await deployment.customer("window")
    replies = await fire(gateway.port, keys, "/v1/posts/1?n=0", waves=2)
    await deployment.refill(gateway.port, keys, replies, until=40)
    admitted = statuses(replies).get(200, 0)
    assert admitted == 40
    refused = [reply.json() for reply in replies if reply.status == 429]
    assert len(refused) == len(replies) - admitted
    assert all(body["scope"] == "window" and body["violated-policies"] == ["1d"] for body in refused)
    assert all(int(reply.headers["retry-after"]) >= 1 for reply in replies if reply.status == 429)
    await deployment.settled(customer)
    document = await usage(gateway.port, customer)
    assert document["calls"]["used"] == admitted  # type: ignore[index]
    assert document["rejected"]["rate_limited"] == len(replies) - admitted  # type: ignore[index]


async def test_records_quota_overshoot_is_bounded_by_responses_in_flight(
    deployment: Deployment, gateway: Gateway
) -> None:
    customer, keys = await deployment.customer("records")
    received = 0
    refused = 0
    for _ in range(4):
        replies = await fire(gateway.port, keys, "/v1/posts/search?n=10", waves=1)
        await deployment.settled(customer)  # fast mode: records reach the store within the flush interval
        for reply in replies:
            if reply.status == 200:
                received += len(reply.json()["data"])
            else:
                assert reply.status == 429
                assert reply.json()["violated-policies"] == ["records-period"]
                refused += 1
    await deployment.settled(customer)
    document = await usage(gateway.port, customer)
    used = document["records"]["used"]  # type: ignore[index]
    # Usage equals what the clients received: every record served is counted, none twice.
    assert used == received
    # The quota (300) is reached within the first wave's 640 records; what passes it is at most
    # the records of responses already in flight then: one wave of 64 x 10.
    assert 300 <= used <= 300 + CLIENTS * 10
    assert refused >= 2 * CLIENTS  # waves 3 and 4 at least are refused whole


async def test_revoked_key_and_suspended_customer_are_refused_by_every_worker_within_a_second(
    deployment: Deployment, gateway: Gateway
) -> None:
    customer, keys = await deployment.customer("window", keys=2)
    revoked, kept = keys
    warm = await fire(gateway.port, [revoked, kept], "/v1/posts/1?n=0", waves=1)  # fills every worker's cache
    assert set(statuses(warm)) == {200, 429}
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", headers=admin) as client:
        listed = (await client.get(f"/_meterguard/customers/{customer}/keys")).json()
        entries = listed["keys"] if isinstance(listed, dict) else listed
        revoked_id = next(entry["key_id"] for entry in entries if revoked.startswith(entry["prefix"]))
        assert (await client.delete(f"/_meterguard/keys/{revoked_id}")).status_code == 204
        await asyncio.sleep(1.0)
        replies = await fire(gateway.port, [revoked], "/v1/posts/1?n=0", waves=1)
        assert statuses(replies) == {401: CLIENTS}
        response = await client.patch(f"/_meterguard/customers/{customer}", json={"status": "suspended"})
        assert response.status_code == 200
        await asyncio.sleep(1.0)
        replies = await fire(gateway.port, [kept], "/v1/posts/1?n=0", waves=1)
        assert statuses(replies) == {403: CLIENTS}
