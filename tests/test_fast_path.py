"""The fast path's local bookkeeping, against a real Redis: leases, flushes, and forgetting idle customers."""

from __future__ import annotations

import time

import pytest

from meterguard import lease as lease_module
from meterguard.lease import FastPath
from meterguard.periods import period_for
from meterguard.plans import Window
from meterguard.store.base import AdmitRequest, Meter, Settlement
from meterguard.store.redis import RedisStore

from .conftest import REDIS_URL, drop_keys


def request(customer: str) -> AdmitRequest:
    period = period_for(time.time())
    return AdmitRequest(
        customer=customer, key_id="key_a", route="GET /v1/posts", listed=True, weight=1,
        windows=(Window("1h", 10_000, 3600),), strategy="sliding", period_id=period.id, period_end=period.end_ts,
        calls=Meter(100_000), records=Meter(None), spend_cap_cents=None, day="2026-11-29",
    )  # fmt: skip


@pytest.fixture
async def fast(key_prefix: str):  # type: ignore[no-untyped-def]
    store = RedisStore(REDIS_URL, key_prefix=key_prefix)
    path = FastPath(store)
    yield path, store
    await path.aclose()
    await store.aclose()
    await drop_keys(REDIS_URL, key_prefix)


async def test_local_decisions_reach_the_store_on_flush_and_leases_come_back(fast) -> None:  # type: ignore[no-untyped-def]
    path, store = fast
    decisions = [await path.admit(request("acme")) for _ in range(50)]
    assert all(decision.admitted for decision in decisions)
    assert decisions[0].granted > 0  # the first went to the store and took a lease
    path.settle(Settlement("acme", "key_a", "GET /v1/posts", True, request("acme").period_id,
                           request("acme").period_end, 30, "2026-11-29"))  # fmt: skip
    await path.aclose()  # gives every lease back and flushes
    usage = await store.usage("acme", request("acme").period_id)
    assert (usage.calls, usage.records) == (50, 30)
    # Nothing stays reserved: an exact admission sees the whole window but the 50 calls.
    after = await store.admit(request("acme"))
    assert after.windows[0].remaining == 10_000 - 51


async def test_idle_customers_are_forgotten(fast, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path, _ = fast
    monkeypatch.setattr(lease_module, "IDLE_PRUNE_AT", 5)
    for index in range(10):
        await path.admit(request(f"customer-{index}"))
        path.settle(Settlement(f"customer-{index}", "key_a", "GET /v1/posts", True, request("x").period_id,
                               request("x").period_end, 1, "2026-11-29"))  # fmt: skip
    assert len(path._settled) == 10
    for lease_key, lease in list(path._leases.items()):
        path._retire(lease_key, lease, lease.expires)
    await path.flush()  # sends what is pending; nothing is busy any more
    await path.flush()  # and now forgets the idle bookkeeping
    assert path._settled == {} and path._sizes == {}
