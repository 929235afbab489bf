"""Shared fixtures, and which Redis servers the suite uses.

Two shared servers, which tests never stop, reconfigure or FLUSHDB (each test writes under a
key prefix of its own and deletes only that prefix at the end; one test empties the script
cache with SCRIPT FLUSH, which every client recovers from):

- a Redis server at ``MG_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``;
- a Redis Cluster at ``MG_TEST_CLUSTER_URL``, default: the URL ``make test`` wrote to
  ``.mg-test/cluster/url`` when it started the suite's cluster on free ports
  (scripts/redis-cluster.sh).

``make test`` starts each of them unless the variable is set (CONTRIBUTING.md). Nothing here
starts, skips or waits for them: a test that needs one fails when it does not answer.

Fault tests get servers of their own instead, started and stopped by fixtures of
tests/servers.py (``private_redis``, ``redis_servers``, ``private_cluster``,
``cluster_factory``) and tests/faultproxy.py (``fault_proxy``), registered below.
"""

from __future__ import annotations

import itertools
import os
import sysconfig
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

import meterguard
from meterguard.store.base import Store
from meterguard.store.cluster import RedisClusterStore, startup_nodes
from meterguard.store.memory import MemoryStore
from meterguard.store.redis import RedisStore

pytest_plugins = ("tests.servers", "tests.faultproxy")

# written by scripts/redis-cluster.sh (scripts/_servers.sh)
STATE_DIR = Path(os.environ.get("MG_TEST_STATE") or Path(__file__).resolve().parent.parent / ".mg-test")
NO_CLUSTER = "redis+cluster://127.0.0.1:1"


def _cluster_url() -> str:
    if url := os.environ.get("MG_TEST_CLUSTER_URL"):
        return url
    try:
        return (STATE_DIR / "cluster" / "url").read_text().strip()
    except OSError:
        return NO_CLUSTER  # nothing listens on port 1: the cluster tests fail at once


REDIS_URL = os.environ.get("MG_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER_URL = _cluster_url()


def compiled_modules(package: Path = Path(meterguard.__file__).parent) -> dict[str, bool]:
    """The meterguard modules imported from mypyc's extension modules (``make compile``), each
    with whether its source changed after it was built (the build would hide the change)."""
    found = {}
    for built in package.rglob(f"*{sysconfig.get_config_var('EXT_SUFFIX')}"):
        source = built.with_name(built.name.split(".", 1)[0] + ".py")
        name = ".".join(source.relative_to(package.parent).with_suffix("").parts)
        found[name] = source.exists() and source.stat().st_mtime > built.stat().st_mtime
    return found


def pytest_configure(config: pytest.Config) -> None:
    stale = sorted(name for name, changed in compiled_modules().items() if changed)
    if stale:
        pytest.exit(f"compiled modules older than their source: {', '.join(stale)}; "
                    "`make compile` again, or `make uncompile`", returncode=4)  # fmt: skip


def pytest_report_header() -> list[str]:
    cluster = CLUSTER_URL if CLUSTER_URL != NO_CLUSTER else "none (run `make test`, or set MG_TEST_CLUSTER_URL)"
    compiled = sorted(compiled_modules())
    build = f"compiled by mypyc: {', '.join(compiled)}" if compiled else "interpreted"
    return [f"redis: {REDIS_URL}", f"redis cluster: {cluster}", f"meterguard: {build}"]


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
