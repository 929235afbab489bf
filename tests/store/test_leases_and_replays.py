"""Store semantics behind the fast path (leases, flushes) and idempotent replays, on every store.

The memory store decides in-process and never leases (``granted`` is always 0); Redis and
Redis Cluster grant leases. Replays behave the same everywhere.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from meterguard.plans import Window
from meterguard.store.base import AdmitRequest, Flush, Meter, Store, StoredResponse, UsageRow

from .test_store_behaviour import PERIOD, TODAY, period_end, request

HOUR = Window("1h", 1000, 3600)


@pytest.fixture
def leasing(store: Store) -> bool:
    return store.url.startswith("redis")


async def test_a_lease_is_counted_in_every_window_and_reserved_against_the_quota(store: Store, leasing: bool) -> None:
    first = await store.admit(replace(request("acme", windows=(HOUR,), calls=Meter(100)), lease=50))
    assert first.admitted
    if not leasing:
        assert first.granted == 0
        return
    # An eighth of what is left after this request: (100 - 1) // 8 = 12.
    assert first.granted == 12
    assert first.windows[0].remaining == 1000 - 1 - 12
    assert first.calls_used == 1  # reserved units are not usage
    usage = await store.usage("acme", PERIOD)
    assert usage.calls == 1
    # The reservation counts against the quota for everybody else.
    exact = [await store.admit(request("acme", calls=Meter(100))) for _ in range(90)]
    assert sum(decision.admitted for decision in exact) == 100 - 1 - 12


async def test_near_the_limit_a_lease_shrinks_to_nothing(store: Store, leasing: bool) -> None:
    decisions = [await store.admit(replace(request("acme", calls=Meter(20)), lease=50)) for _ in range(20)]
    admitted = sum(decision.admitted for decision in decisions)
    granted = sum(decision.granted for decision in decisions)
    assert admitted + granted <= 20  # never a unit past the quota, leased or not
    assert decisions[-1].granted == 0
    if leasing:
        assert granted > 0


async def test_flush_turns_used_lease_units_into_usage_and_gives_the_rest_back(store: Store, leasing: bool) -> None:
    if not leasing:
        pytest.skip("the memory store never leases")  # its flush is covered below
    first = await store.admit(replace(request("acme", windows=(HOUR,), calls=Meter(100)), lease=8))
    assert first.granted == 8
    await store.flush(
        Flush("acme", PERIOD, period_end(), TODAY,
              rows=(UsageRow("GET /v1/posts/search", True, "key1", 5, 40),), consumed=5, returned=3,
              windows=((HOUR, first.slots[0], 3),))
    )  # fmt: skip
    usage = await store.usage("acme", PERIOD)
    assert (usage.calls, usage.records) == (6, 40)
    assert usage.by_key["key1"] == type(usage.by_key["key1"])(6, 40)
    # Nothing is reserved any more: 94 calls are left, and the window got its 3 units back.
    after = await store.admit(request("acme", windows=(HOUR,), calls=Meter(100)))
    assert after.windows[0].remaining == 1000 - 6 - 1
    decisions = [await store.admit(request("acme", calls=Meter(100))) for _ in range(100)]
    assert sum(decision.admitted for decision in decisions) == 100 - 7


async def test_flush_of_usage_alone(store: Store) -> None:
    await store.flush(
        Flush("acme", PERIOD, period_end(), TODAY,
              rows=(UsageRow("GET /a", True, "key1", 2, 7), UsageRow("GET /b", False, "key2", 1, 0)),
              consumed=0, returned=0)
    )  # fmt: skip
    usage = await store.usage("acme", PERIOD)
    assert (usage.calls, usage.records) == (3, 7)
    assert set(usage.by_route) == {"GET /a", "GET /b"}
    day = (await store.daily("acme", [TODAY]))[0]
    assert (day.calls, day.records) == (3, 7)


def keyed(req: AdmitRequest, key: str, fingerprint: str = "fp-1") -> AdmitRequest:
    return replace(req, idempotency_key=key, idempotency_fingerprint=fingerprint)


async def test_an_idempotent_repeat_is_replayed_unbilled_but_still_rate_limited(store: Store) -> None:
    window = Window("1h", 3, 3600)
    req = keyed(request("acme", windows=(window,), calls=Meter(2)), "order-1")
    first = await store.admit(req)
    assert first.admitted and not first.replay
    response = StoredResponse(200, ((b"content-type", b"application/json"),), b'{"data": [1]}')
    await store.finish_idempotent("acme", "order-1", "fp-1", response, 3600)
    retry = await store.admit(req)
    assert retry.admitted and retry.replay
    assert await store.stored_response("acme", "order-1") == response
    usage = await store.usage("acme", PERIOD)
    assert (usage.calls, usage.replays) == (1, 1)
    # The window protects the service, replays included: the third unit is the last.
    assert (await store.admit(request("acme", windows=(window,), calls=Meter(2)))).admitted
    refused = await store.admit(req)
    assert not refused.admitted and refused.reason == "rate_limited"


async def test_an_idempotency_key_in_flight_or_reused_is_refused_and_not_counted(store: Store) -> None:
    req = keyed(request("acme", calls=Meter(5)), "order-2")
    assert (await store.admit(req)).admitted
    busy = await store.admit(req)
    assert (busy.admitted, busy.reason, busy.idempotency) == (False, None, "in_flight")
    other = await store.admit(keyed(request("acme", calls=Meter(5)), "order-2", "another request"))
    assert (other.admitted, other.idempotency) == (False, "mismatch")
    await store.finish_idempotent("acme", "order-2", "fp-1", StoredResponse(201, (), b""), 3600)
    assert (await store.admit(keyed(request("acme", calls=Meter(5)), "order-2", "another request"))).idempotency == (
        "mismatch"
    )
    usage = await store.usage("acme", PERIOD)
    assert (usage.calls, usage.replays, sum(usage.rejected.values())) == (1, 0, 0)


async def test_a_response_that_cannot_be_replayed_frees_the_key(store: Store) -> None:
    req = keyed(request("acme", calls=Meter(5)), "order-3")
    assert (await store.admit(req)).admitted
    await store.finish_idempotent("acme", "order-3", "fp-1", None, 3600)
    again = await store.admit(req)
    assert again.admitted and not again.replay  # runs, and is billed, as a new call
    assert (await store.usage("acme", PERIOD)).calls == 2


async def test_an_idempotency_key_of_a_refused_request_is_not_remembered(store: Store) -> None:
    refused = await store.admit(keyed(request("acme", calls=Meter(0)), "k"))
    assert not refused.admitted
    again = await store.admit(keyed(request("acme", calls=Meter(1)), "k"))
    assert again.admitted and not again.replay  # billed: the first attempt never was
    assert (await store.usage("acme", PERIOD)).calls == 1


async def test_idempotency_keys_are_per_customer(store: Store) -> None:
    await store.admit(keyed(request("acme"), "same"))
    other = await store.admit(keyed(request("globex"), "same"))
    assert other.admitted and not other.replay and other.idempotency is None


async def test_graduated_tiers_price_the_spend_cap_check_like_billing_py(store: Store) -> None:
    from meterguard.billing import spend_cents

    calls = Meter(10, 1, 1_000_000, ((5, 1_000_000), (12, 500_000), (None, 333_333)))
    decisions = [await store.admit(request("acme", calls=calls, cap=1_000)) for _ in range(40)]
    for used, decision in enumerate(decisions):
        if decision.admitted:
            assert decision.spend_cents == spend_cents(used, 0, calls, Meter(None)), used
    # $10.00 cap: 5 x $1 + 7 x $0.50 = $8.50 after 22 calls; then $0.33 each: the cap is reached at 27.
    assert sum(decision.admitted for decision in decisions) == 27
    assert decisions[27].reason == "spend_cap"


async def test_a_plan_that_bills_overage_is_never_leased(store: Store) -> None:
    billed = Meter(100, 1, 1_000_000)
    decision = await store.admit(replace(request("acme", calls=billed), lease=50))
    assert decision.admitted and decision.granted == 0
    capped = await store.admit(replace(request("globex", calls=Meter(100), cap=500), lease=50))
    assert capped.admitted and capped.granted == 0
