"""Shared fixtures.

The Redis-backed tests REQUIRE a Redis server on 127.0.0.1:6379 and a Redis Cluster on
127.0.0.1:7001-7003; ``make test`` starts both (scripts/ensure-redis.sh, scripts/redis-cluster.sh)
and nothing here starts servers or skips. Every test writes under its own key prefix and
deletes only the keys under that prefix at the end: never FLUSHDB, the server is shared.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from meterguard.store.base import Store
from meterguard.store.cluster import RedisClusterStore, startup_nodes
from meterguard.store.memory import MemoryStore
from meterguard.store.redis import RedisStore

pytest_plugins = ("tests.servers", "tests.faultproxy")  # private servers and a fault proxy for fault tests

REDIS_URL = os.environ.get("MG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER_URL = os.environ.get("MG_TEST_CLUSTER_URL", "redis+cluster://127.0.0.1:7001")
STORE_KINDS = ("memory", "redis", "cluster")


async def drop_keys(url: str, prefix: str) -> int:
    """Delete the keys under ``prefix`` (and only those) on a server or a whole cluster."""
    pattern = f"{prefix}:*"
    if url.startswith("redis+cluster://"):
        host, port = startup_nodes(url)[0]
        cluster = RedisCluster(host=host, port=port, decode_responses=True)
        try:
            keys = [key async for key in cluster.scan_iter(match=pattern, count=1000)]
            for key in keys:  # one by one: the keys live in many slots
                await cluster.unlink(key)
        finally:
            await cluster.aclose()
        return len(keys)
    client = Redis.from_url(url, decode_responses=True)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            await client.unlink(*keys)
    finally:
        await client.aclose()
    return len(keys)


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def cluster_url() -> str:
    return CLUSTER_URL


@pytest.fixture
def key_prefix() -> str:
    """A key prefix no other test uses, so tests never see data they did not write."""
    return f"mgtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_customer() -> Callable[[str], str]:
    """``unique_customer("acme")`` -> ``"acme-<token>-1"``: a customer id no other test uses."""
    token = uuid.uuid4().hex[:8]
    counter = itertools.count(1)

    def make(base: str = "customer") -> str:
        return f"{base}-{token}-{next(counter)}"

    return make


StoreFactory = Callable[[str], Awaitable[Store]]


@pytest.fixture
async def store_factory(redis_url: str, cluster_url: str, key_prefix: str) -> AsyncIterator[StoreFactory]:
    """``await store_factory("memory" | "redis" | "cluster")``: a new store under this test's prefix.

    Every store made is closed, and every key written under the prefix deleted, at teardown.
    """
    made: list[Store] = []
    used: set[str] = set()

    async def make(kind: str) -> Store:
        store: Store
        if kind == "memory":
            store = MemoryStore()
        elif kind == "redis":
            store = RedisStore(redis_url, key_prefix=key_prefix)
            used.add(redis_url)
        elif kind == "cluster":
            store = RedisClusterStore(cluster_url, key_prefix=key_prefix)
            used.add(cluster_url)
        else:
            raise ValueError(kind)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()
    for url in used:
        await drop_keys(url, key_prefix)


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, store_factory: StoreFactory) -> Store:
    """A fresh, empty store of each kind (ids ``memory``, ``redis``, ``cluster``)."""
    return await store_factory(request.param)
