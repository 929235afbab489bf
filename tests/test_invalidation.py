"""Revocations and customer changes reach every gateway's cache at once, over Redis pub/sub.

Proven to fail: with Directory._announce sending nothing, both tests fail ("took 0.800s: the
cache expired, no event arrived").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from meterguard import MeterGuard, parse_config
from meterguard.auth import CACHE_TTL_SECONDS
from meterguard.store import store_from_url

from .conftest import REDIS_URL, drop_keys
from .support import data_app

PLANS = "version: 1\nplans:\n  free: {quotas: {calls: 1000}}\n"


@pytest.fixture
async def gateways(key_prefix: str) -> AsyncIterator[list[tuple[MeterGuard, httpx.AsyncClient]]]:
    """Two gateways, each with its own store connections, sharing one Redis."""
    made = []
    for _ in range(2):
        store = store_from_url(f"{REDIS_URL}?prefix={key_prefix}")
        guard = MeterGuard(data_app, config=parse_config(PLANS), store=store)
        made.append((guard, httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t")))
    yield made
    for guard, client in made:
        await client.aclose()
        await guard.aclose()
    await drop_keys(REDIS_URL, key_prefix)


async def wait_for(predicate: object, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < seconds:
        if await predicate():  # type: ignore[operator]
            return loop.time() - start
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {seconds}s")


async def test_revocation_reaches_another_gateway_well_before_the_cache_expires(
    gateways: list[tuple[MeterGuard, httpx.AsyncClient]],
) -> None:
    (first, _), (_, second_client) = gateways
    await first.directory.create("acme", "free")
    record, key = await first.directory.issue_key("acme")
    assert (await second_client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200
    await asyncio.sleep(0.2)  # the second gateway's subscription is up and its cache holds the key

    await first.directory.revoke_key(record.key_id)

    async def refused() -> bool:
        response = await second_client.get("/v1/posts/1?n=0", headers={"x-api-key": key})
        return response.status_code == 401

    took = await wait_for(refused, CACHE_TTL_SECONDS)
    assert took < CACHE_TTL_SECONDS / 2, f"took {took:.3f}s: the cache expired, no event arrived"


async def test_suspension_and_plan_change_reach_another_gateway(
    gateways: list[tuple[MeterGuard, httpx.AsyncClient]],
) -> None:
    (first, _), (_, second_client) = gateways
    await first.directory.create("globex", "free")
    _, key = await first.directory.issue_key("globex")
    assert (await second_client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200
    await asyncio.sleep(0.2)
    await first.directory.update("globex", status="suspended")

    async def suspended() -> bool:
        response = await second_client.get("/v1/posts/1?n=0", headers={"x-api-key": key})
        return response.status_code == 403

    assert await wait_for(suspended, CACHE_TTL_SECONDS) < CACHE_TTL_SECONDS / 2
