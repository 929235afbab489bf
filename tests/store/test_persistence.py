"""A Redis restart with AOF keeps every counter: usage is billing data, not a cache."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from meterguard.plans import Window
from meterguard.store.base import AdmitRequest, CustomerRecord, Meter, Settlement
from meterguard.store.redis import RedisStore

from ..servers import RedisServer


def admission(customer: str) -> AdmitRequest:
    return AdmitRequest(
        customer=customer, key_id="key_a", route="GET /v1/posts", listed=True, weight=1,
        windows=(Window("1d", 1000, 86400),), strategy="sliding", period_id="2026-11",
        period_end=int(time.time()) + 86400, calls=Meter(100), records=Meter(None), spend_cap_cents=None,
        day="2026-11-29",
    )  # fmt: skip


async def test_counters_survive_a_redis_restart_with_aof(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url)
    await store.create_customer(CustomerRecord("acme", "pro"))
    for _ in range(7):
        assert (await store.admit(admission("acme"))).admitted
    await store.settle(Settlement("acme", "key_a", "GET /v1/posts", True, "2026-11", admission("acme").period_end, 42,
                                  "2026-11-29"))  # fmt: skip
    await store.aclose()

    private_redis.restart()  # graceful; the crash (SIGKILL) case is tests/test_servers.py's

    store = RedisStore(private_redis.url)
    try:
        usage = await store.usage("acme", "2026-11")
        assert (usage.calls, usage.records) == (7, 42)
        assert usage.by_key["key_a"].calls == 7
        assert (await store.daily("acme", ["2026-11-29"]))[0].calls == 7
        assert await store.get_customer("acme") is not None
        decision = await store.admit(admission("acme"))  # the window's count came back too
        assert decision.calls_used == 8
        assert decision.windows[0].remaining == 1000 - 8
    finally:
        await store.aclose()


async def test_diagnose_warns_about_settings_that_lose_usage(private_redis: RedisServer) -> None:
    store = RedisStore(private_redis.url)
    try:
        assert await store.diagnose() == []  # AOF on, noeviction: nothing to say
        client = Redis(port=private_redis.port)
        await client.config_set("appendonly", "no")
        await client.config_set("maxmemory-policy", "allkeys-lru")
        await client.aclose()
        warnings = await store.diagnose()
        assert any("appendonly" in warning for warning in warnings)
        assert any("allkeys-lru" in warning for warning in warnings)
    finally:
        await store.aclose()
