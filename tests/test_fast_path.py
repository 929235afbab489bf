"""The fast path's local bookkeeping, against a real Redis: leases, flushes, and forgetting idle customers."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import pytest

from meterguard import lease as lease_module
from meterguard.lease import TURN_DELAY_SECONDS, FastPath
from meterguard.periods import period_for
from meterguard.plans import Window
from meterguard.store.base import AdmitRequest, Meter, Settlement
from meterguard.store.redis import RedisStore

from .conftest import REDIS_URL, StoreFactory, drop_keys


def request(customer: str) -> AdmitRequest:
    period = period_for(time.time())
    return AdmitRequest(
        customer=customer, key_id="key_a", route="GET /v1/posts", listed=True, weight=1,
        windows=(Window("1h", 10_000, 3600),), strategy="sliding", period_id=period.id, period_end=period.end_ts,
        calls=Meter(100_000), records=Meter(None), spend_cap_cents=None, day="2026-11-29",
    )  # fmt: skip


def use_store(path: FastPath, store: object) -> None:
    """Put a test's wrapper between the fast path (its leases and its local usage) and the store."""
    path._store = path.usage._store = store  # type: ignore[assignment]


async def early_in_a_second() -> None:
    """Leases end at every whole second: a test that counts store calls starts just after one."""
    fraction = time.time() % 1.0
    if fraction > 0.2:
        await asyncio.sleep(1.0 - fraction + 0.01)


async def past_the_turn() -> None:
    """Until the fast path's turn after the next whole second has run (and its calls are back)."""
    await asyncio.sleep(1.0 - time.time() % 1.0 + TURN_DELAY_SECONDS + 0.3)


@pytest.fixture
async def fast(key_prefix: str):  # type: ignore[no-untyped-def]
    store = RedisStore(REDIS_URL, key_prefix=key_prefix)
    path = FastPath(store)
    yield path, store
    await path.aclose()
    await store.aclose()
    await drop_keys(REDIS_URL, key_prefix)


@pytest.fixture(params=["redis", "cluster"])
async def fast_anywhere(request: pytest.FixtureRequest, store_factory: StoreFactory):  # type: ignore[no-untyped-def]
    """The fast path on a single Redis and on a Redis Cluster (where the turn's lease requests,
    grouped per customer, go to each customer's slot)."""
    store = await store_factory(request.param)
    path = FastPath(store)
    yield path, store
    await path.aclose()


async def test_local_decisions_reach_the_store_on_flush_and_leases_come_back(fast) -> None:  # type: ignore[no-untyped-def]
    path, store = fast
    await early_in_a_second()
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
    assert len(path.usage._settled) == 10
    for lease_key, lease in list(path._leases.items()):
        path._retire(lease_key, lease, lease.expires)
    await path.flush()  # sends what is pending; nothing is busy any more
    await path.flush()  # and now forgets the idle bookkeeping
    assert path.usage._settled == {} and path._rates == {}


class _Counting:
    """The store, with what the fast path asks of it counted (the store itself is the real one)."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.exact = self.leases = self.flushes = 0

    async def admit(self, request: AdmitRequest) -> object:
        if request.lease:
            self.leases += 1
        else:
            self.exact += 1
        return await self.store.admit(request)

    async def flush(self, flush: object) -> None:
        self.flushes += 1
        await self.store.flush(flush)  # type: ignore[arg-type]


async def test_a_burst_waits_for_the_lease_already_asked_for(fast, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path, store = fast
    # What is tested is that they wait, not for how long: on a busy machine the lease's round trip
    # took longer than LEASE_WAIT_SECONDS once, and the waiters rightly gave up.
    monkeypatch.setattr(lease_module, "LEASE_WAIT_SECONDS", 10.0)
    counting = _Counting(store)
    use_store(path, counting)
    path._rates[("acme", request("acme").period_id, request("acme").windows)] = 1e6  # a lease of MAX_LEASE
    await early_in_a_second()
    # 40 requests of one customer in the same tick, no lease yet: one asks the store for a lease,
    # the others wait for it and draw on it (before: 39 decisions of their own in the store).
    decisions = await asyncio.gather(*(path.admit(request("acme")) for _ in range(40)))
    assert all(decision.admitted for decision in decisions)
    assert (counting.leases, counting.exact) == (1, 0)
    await path.aclose()
    usage = await store.usage("acme", request("acme").period_id)
    assert usage.calls == 40


async def test_usage_rides_with_the_next_lease_request(fast, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path, store = fast
    counting = _Counting(store)
    use_store(path, counting)
    monkeypatch.setattr(lease_module, "FIRST_LEASE", 5)
    monkeypatch.setattr(lease_module, "MAX_LEASE", 5)
    await early_in_a_second()
    # Leases of 5, the next asked for when a quarter is left: the 1st, 6th and 12th requests ask
    # (the unit left of a lease moves to the next one); the others draw on a lease.
    decisions = [await path.admit(request("acme")) for _ in range(13)]
    assert all(decision.admitted for decision in decisions)
    # The usage drawn on the first two leases went to the store with the 6th and 12th requests'
    # lease requests, in their batch; no periodic flush was needed for it.
    assert counting.leases == 3
    assert counting.flushes == 2
    await asyncio.sleep(0.05)
    assert (await store.usage("acme", request("acme").period_id)).calls == 12  # the 13th waits
    await path.aclose()
    assert (await store.usage("acme", request("acme").period_id)).calls == 13


async def test_a_waiter_decides_on_its_own_when_the_lease_does_not_come(fast, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path, store = fast
    monkeypatch.setattr(lease_module, "LEASE_WAIT_SECONDS", 0.05)
    release = asyncio.Event()

    class Slow(_Counting):
        async def admit(self, request: AdmitRequest) -> object:
            if request.lease:
                await release.wait()  # the lease's reply is late (a slow store)
            return await super().admit(request)

    slow = Slow(store)
    use_store(path, slow)
    asker = asyncio.ensure_future(path.admit(request("acme")))
    await asyncio.sleep(0)
    started = time.monotonic()
    waiter = await path.admit(request("acme"))
    assert waiter.admitted and time.monotonic() - started < 1.0
    assert slow.exact == 1  # it waited LEASE_WAIT_SECONDS, then asked the store for its own decision
    release.set()
    assert (await asker).admitted


async def test_the_next_lease_is_asked_for_while_the_last_one_still_serves(
    fast, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    path, store = fast
    monkeypatch.setattr(lease_module, "FIRST_LEASE", 8)
    monkeypatch.setattr(lease_module, "MAX_LEASE", 8)
    release = asyncio.Event()
    release.set()

    class Gated(_Counting):
        async def admit(self, request: AdmitRequest) -> object:
            if not request.lease:
                return await super().admit(request)
            self.leases += 1
            await release.wait()  # the store is slow to answer a lease request
            return await self.store.admit(request)

    gated = Gated(store)
    use_store(path, gated)
    await early_in_a_second()
    assert (await path.admit(request("acme"))).granted == 8
    for _ in range(6):  # 8 -> 2 units: a quarter is left
        await path.admit(request("acme"))
    assert gated.leases == 1
    release.clear()
    renewing = asyncio.ensure_future(path.admit(request("acme")))  # asks for the next lease
    await asyncio.sleep(0.01)
    assert not renewing.done() and gated.leases == 2
    # The customer's other requests are served from what is left, without waiting for the store.
    served = [path.take(request("acme")) for _ in range(2)]
    assert all(decision is not None and decision.admitted for decision in served)
    release.set()
    assert (await renewing).granted == 8
    assert gated.exact == 0
    await path.aclose()
    assert (await store.usage("acme", request("acme").period_id)).calls == 10


async def test_the_turn_asks_for_the_next_lease_and_takes_the_usage_along(fast_anywhere) -> None:  # type: ignore[no-untyped-def]
    path, store = fast_anywhere
    counting = _Counting(store)
    use_store(path, counting)
    period = request("acme").period_id
    await early_in_a_second()
    for _ in range(3):  # the first asks for a lease, the others draw on it
        assert (await path.admit(request("acme"))).admitted
    path.settle(Settlement("acme", "key_a", "GET /v1/posts", True, period, request("acme").period_end, 7, "2026-11-29"))
    assert (counting.leases, counting.exact, counting.flushes) == (1, 0, 0)
    await past_the_turn()
    # Just after the whole second, the lease that ended was followed by the next one, asked for
    # without a request (lease-only: no call counted), with the usage riding along.
    assert counting.leases == 2 and counting.exact == 0
    usage = await store.usage("acme", period)
    assert (usage.calls, usage.records) == (3, 7)
    assert usage.by_key["key_a"].calls == 3
    # A request after the turn finds that lease waiting: decided here, with no store call.
    served = path.take(request("acme"))
    assert served is not None and served.admitted
    await path.aclose()
    usage = await store.usage("acme", period)
    assert (usage.calls, usage.records) == (4, 7)
    # The lease-only admission wrote no usage line of its own (no row of 0 calls in the audit trail).
    events = await store.range_events("acme", "0", 100)
    rows = [cell for _, fields in events for cell in json.loads(fields["keys"]).values()]
    assert rows and all(cell != [0, 0] for cell in rows)
    # Nothing stays reserved: an exact admission sees the whole window but the 4 calls.
    assert (await store.admit(request("acme"))).windows[0].remaining == 10_000 - 5


async def test_a_customer_idle_for_a_second_is_not_leased_at_the_turn(fast) -> None:  # type: ignore[no-untyped-def]
    path, store = fast
    counting = _Counting(store)
    use_store(path, counting)
    await early_in_a_second()
    assert (await path.admit(request("acme"))).granted > 0  # its own call, and a lease
    await past_the_turn()
    assert counting.leases == 2  # it had a request in that second: its next lease waits for it
    await past_the_turn()
    assert counting.leases == 2 and path._leases == {}  # none in this one: no lease at this turn
    # Its unused units went back: an exact admission sees the whole window but its 1 call.
    assert (await store.admit(request("acme"))).windows[0].remaining == 10_000 - 2


async def test_a_lease_only_admission_counts_no_call_and_writes_no_usage_line(fast_anywhere) -> None:  # type: ignore[no-untyped-def]
    _, store = fast_anywhere
    decision = await store.admit(replace(request("acme"), weight=0, lease=5))
    assert decision.admitted and decision.granted == 5 and decision.calls_used == 0
    usage = await store.usage("acme", request("acme").period_id)
    assert usage.calls == 0 and usage.by_key == {}
    assert await store.range_events("acme", "0", 100) == []  # the audit trail has nothing to show for it


async def test_the_turn_asks_for_leases_a_few_per_script_call(fast, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    path, store = fast
    monkeypatch.setattr(lease_module, "AHEAD_PER_CALL", 2)
    in_flight, most, order = 0, 0, []

    class Watching(_Counting):
        async def admit(self, request: AdmitRequest) -> object:
            nonlocal in_flight, most
            if request.weight:
                return await super().admit(request)
            order.append(request.customer)
            in_flight += 1
            most = max(most, in_flight)
            try:
                return await super().admit(request)
            finally:
                in_flight -= 1

    use_store(path, Watching(store))
    await early_in_a_second()
    for index in range(5):
        for _ in range(index + 2):
            assert (await path.admit(request(f"customer-{index}"))).admitted
    await past_the_turn()
    # Every one of them has its next lease, asked for two at a time (a script call each).
    assert sorted(order) == [f"customer-{index}" for index in range(5)] and most == 2
    assert all(path.take(request(f"customer-{index}")) is not None for index in range(5))
