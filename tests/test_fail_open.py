"""fail_open counts what it serves, in-process: a known key, and a key this process never saw.

The store is a real redis-server behind the fault-injecting proxy, blackholed while requests are
served; after it heals, the usage document must show every call and record served.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from meterguard import MeterGuard, parse_config
from meterguard.keys import generate_key, hash_key

from .faultproxy import FaultProxy
from .servers import RedisServer
from .support import data_app

PLANS = """
version: 1
on_store_error: fail_open
plans:
  data:
    rate_limits: ["1000/minute"]
customers:
  known: {{plan: data, keys: ["{known}"]}}
  stranger: {{plan: data, keys: ["{stranger}"]}}
"""


async def usage_of(guard: MeterGuard, customer: str) -> tuple[int, int]:
    period = guard.engine.period(1, guard.clock())
    usage = await guard.store.usage(customer, period.id)
    return usage.calls, usage.records


async def test_fail_open_counts_a_known_and_a_never_seen_key_once_the_store_is_back(
    private_redis: RedisServer, fault_proxy: Callable[[int], FaultProxy], tmp_path: Path
) -> None:
    known, stranger = generate_key(), generate_key()
    config = parse_config(PLANS.format(known=hash_key(known), stranger=hash_key(stranger)))
    proxy = fault_proxy(private_redis.port)
    guard = MeterGuard(data_app, config=config, store=f"{proxy.url}?socket_timeout=0.3&prefix=fo")
    transport = httpx.ASGITransport(app=guard)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/v1/posts/1?n=2", headers={"x-api-key": known})).status_code == 200
        proxy.blackhole()
        for key in (known, stranger, stranger):  # the stranger's key was never looked up here
            response = await client.get("/v1/posts/1?n=3", headers={"x-api-key": key})
            assert response.status_code == 200
        proxy.heal()
        for _ in range(50):
            await asyncio.sleep(0.2)
            if await usage_of(guard, "known") == (2, 5) and await usage_of(guard, "stranger") == (2, 6):
                break
        assert await usage_of(guard, "known") == (2, 5)
        assert await usage_of(guard, "stranger") == (2, 6)
    await guard.aclose()
