"""Exactness under real concurrency: independent processes, each with its own connection pool.

Per ARCHITECTURE.md "Tests that can fail": a concurrency test proves nothing unless requests
really overlap. Each worker process opens its connections first, then every worker fires a
wave of simultaneous admits on the same signal, wave after wave. The ``broken`` case runs the
same harness against a deliberately broken admission (read the count, then increment in a
second step, _admit_worker.ReadThenIncrement) and asserts that it overshoots the quota: the
harness is shown to catch a non-atomic admission on every run, not just once.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from meterguard.store.redis import RedisStore

from ..conftest import StoreFactory

WORKER = Path(__file__).with_name("_admit_worker.py")
PROCESSES, CONCURRENCY, WAVES, QUOTA = 4, 40, 3, 150


async def run_workers(url: str, prefix: str, customer: str, broken: bool) -> int:
    extra = ["broken"] if broken else []
    args = [str(WORKER), url, prefix, customer, str(QUOTA), str(CONCURRENCY), *extra]
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        for _ in range(PROCESSES)
    ]
    admitted = 0
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert (await asyncio.wait_for(worker.stdout.readline(), 30)).strip() == b"ready"
        for _ in range(WAVES):
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write(b"go\n")
            await asyncio.gather(*(worker.stdin.drain() for worker in workers if worker.stdin is not None))
            for worker in workers:
                assert worker.stdout is not None
                line = (await asyncio.wait_for(worker.stdout.readline(), 30)).split()
                assert line[0] == b"done", line
                admitted += int(line[1])
    finally:
        for worker in workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.wait(), 30)
            except TimeoutError:
                worker.kill()
                await worker.wait()
    return admitted


@pytest.mark.parametrize("kind", ["redis", "cluster"])
async def test_concurrent_admits_from_many_processes_admit_exactly_the_quota(
    kind: str, store_factory: StoreFactory, redis_url: str, cluster_url: str, key_prefix: str
) -> None:
    store = await store_factory(kind)  # for reading back, and for cleaning up the prefix
    url = cluster_url if kind == "cluster" else redis_url
    assert PROCESSES * CONCURRENCY * WAVES > QUOTA
    admitted = await run_workers(url, key_prefix, "acme", broken=False)
    assert admitted == QUOTA
    usage = await store.usage("acme", "2026-11")
    assert usage.calls == QUOTA
    assert usage.rejected == {"quota": PROCESSES * CONCURRENCY * WAVES - QUOTA}


async def test_the_harness_catches_a_read_then_increment_admission(
    store_factory: StoreFactory, redis_url: str, key_prefix: str
) -> None:
    store = await store_factory("redis")
    assert isinstance(store, RedisStore)
    admitted = await run_workers(redis_url, key_prefix, "acme", broken=True)
    assert admitted > QUOTA, "the requests did not overlap: this harness would not catch a race"
    assert (await store.usage("acme", "2026-11")).calls == admitted
