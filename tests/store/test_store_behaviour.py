"""One behavioural suite, run against every store (memory, redis, cluster).

Time comes from each store's own clock (the Redis server's TIME for Redis), so windows are a
day long: no test crosses a slot boundary, and expectations that depend on time are computed
from ``Decision.now``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from meterguard.billing import spend_cents
from meterguard.errors import CustomerExists
from meterguard.plans import Window
from meterguard.store.base import (
    MAX_UNLISTED_ROUTES,
    OTHER_ROUTE,
    AdmitRequest,
    Counts,
    CustomerRecord,
    DayUsage,
    Decision,
    KeyRecord,
    Meter,
    Settlement,
    Store,
    Usage,
)
from meterguard.windows import reset_after, wait

DAY = 86_400
PERIOD = "2026-11"
TODAY = "2026-11-29"
NO_QUOTA = Meter(None)


def period_end() -> int:
    return int(time.time()) + 20 * DAY


def request(
    customer: str,
    *,
    windows: tuple[Window, ...] = (),
    weight: int = 1,
    strategy: str = "sliding",
    calls: Meter = NO_QUOTA,
    records: Meter = NO_QUOTA,
    cap: int | None = None,
    route: str = "GET /v1/posts/search",
    listed: bool = True,
    key_id: str = "key1",
    day: str = TODAY,
    end: int | None = None,
) -> AdmitRequest:
    return AdmitRequest(
        customer=customer,
        key_id=key_id,
        route=route,
        listed=listed,
        weight=weight,
        windows=windows,
        strategy=strategy,  # type: ignore[arg-type]
        period_id=PERIOD,
        period_end=end if end is not None else period_end(),
        calls=calls,
        records=records,
        spend_cap_cents=cap,
        day=day,
    )


def settlement(req: AdmitRequest, records: int, **changes: object) -> Settlement:
    base = Settlement(req.customer, req.key_id, req.route, req.listed, req.period_id, req.period_end, records, req.day)
    return replace(base, **changes)  # type: ignore[arg-type]


def elapsed_in_slot(decision: Decision, seconds: int) -> float:
    return decision.now - math.floor(decision.now / seconds) * seconds


@pytest.fixture
def customer(unique_customer: Callable[[str], str]) -> str:
    return unique_customer("acme")


# rate windows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["sliding", "fixed"])
async def test_window_admits_up_to_its_limit_then_refuses(store: Store, customer: str, strategy: str) -> None:
    day_window = Window("1d", 3, DAY)
    req = request(customer, windows=(day_window,), strategy=strategy)
    decisions = [await store.admit(req) for _ in range(4)]

    assert [d.admitted for d in decisions] == [True, True, True, False]
    assert [d.windows[0].remaining for d in decisions] == [2, 1, 0, 0]
    assert [d.calls_used for d in decisions] == [1, 2, 3, 3]
    refused = decisions[-1]
    assert refused.reason == "rate_limited"
    assert refused.violated == ("1d",)
    elapsed = elapsed_in_slot(refused, DAY)
    sliding = strategy == "sliding"
    # a full window's t is when it next has room for one unit
    assert refused.windows[0].reset_after == pytest.approx(reset_after(0, 3, elapsed, DAY, 3, sliding), abs=1e-6)
    first = decisions[0]
    assert first.windows[0].reset_after == pytest.approx(DAY - elapsed_in_slot(first, DAY), abs=1e-6)
    expected = wait(0, 3, elapsed, DAY, 3, 1, sliding)
    assert refused.retry_after == pytest.approx(expected, abs=1e-6)
    if strategy == "fixed":
        assert refused.retry_after == pytest.approx(DAY - elapsed, abs=1e-6)
    else:
        # the sliding counter waits past the slot end until this slot's weight has decayed
        assert refused.retry_after > DAY - elapsed
    assert all(d.retry_after == 0.0 and d.reason is None for d in decisions[:3])
    usage = await store.usage(customer, PERIOD)
    assert usage.calls == 3
    assert usage.rejected == {"rate_limited": 1}


async def test_every_violated_window_is_named_and_retry_after_is_the_longest_wait(store: Store, customer: str) -> None:
    short, long = Window("1h", 2, 3600), Window("1d", 2, DAY)
    req = request(customer, windows=(short, long))
    for _ in range(2):
        assert (await store.admit(req)).admitted
    refused = await store.admit(req)
    assert refused.violated == ("1h", "1d")
    waits = [wait(0, 2, elapsed_in_slot(refused, w.seconds), w.seconds, 2, 1, True) for w in (short, long)]
    assert refused.retry_after == pytest.approx(max(waits), abs=1e-6)


async def test_one_full_window_refuses_while_the_others_have_room(store: Store, customer: str) -> None:
    roomy, tight = Window("1h", 100, 3600), Window("route-1d", 1, DAY)
    req = request(customer, windows=(roomy, tight))
    assert (await store.admit(req)).admitted
    refused = await store.admit(req)
    assert (refused.admitted, refused.reason, refused.violated) == (False, "rate_limited", ("route-1d",))
    assert refused.windows[1].remaining == 0
    # the refused request used up nothing: the roomy window still counts one unit
    again = await store.admit(request(customer, windows=(roomy,)))
    assert again.windows[0].remaining == 98


async def test_a_request_of_weight_w_needs_w_units_and_is_refused_whole(store: Store, customer: str) -> None:
    window = Window("1d", 10, DAY)
    heavy = request(customer, windows=(window,), weight=4)
    first, second, third = [await store.admit(heavy) for _ in range(3)]
    assert (first.admitted, second.admitted, third.admitted) == (True, True, False)
    assert (first.windows[0].remaining, second.windows[0].remaining, third.windows[0].remaining) == (6, 2, 2)
    assert third.calls_used == 8
    light = await store.admit(replace(heavy, weight=2))
    assert light.admitted and light.windows[0].remaining == 0 and light.calls_used == 10
    usage = await store.usage(customer, PERIOD)
    assert usage.calls == 10
    assert usage.by_route == {"GET /v1/posts/search": Counts(10, 0)}


async def test_a_weight_above_the_limit_never_fits_and_waits_one_window(store: Store, customer: str) -> None:
    refused = await store.admit(request(customer, windows=(Window("1d", 3, DAY),), weight=5))
    assert not refused.admitted
    assert refused.retry_after == float(DAY)
    assert refused.windows[0].remaining == 3


async def test_windows_are_per_customer(store: Store, unique_customer: Callable[[str], str]) -> None:
    window = (Window("1d", 1, DAY),)
    one, two = unique_customer("one"), unique_customer("two")
    assert (await store.admit(request(one, windows=window))).admitted
    assert (await store.admit(request(two, windows=window))).admitted
    assert not (await store.admit(request(one, windows=window))).admitted


# period quotas ----------------------------------------------------------------------------------------


async def test_block_quota_on_calls(store: Store, customer: str) -> None:
    end = period_end()
    req = request(customer, calls=Meter(5), weight=2, end=end)
    assert [(await store.admit(req)).calls_used for _ in range(2)] == [2, 4]
    refused = await store.admit(req)
    assert (refused.admitted, refused.reason, refused.violated) == (False, "quota", ("calls-period",))
    assert refused.retry_after == pytest.approx(end - refused.now, abs=1e-6)
    assert refused.calls_used == 4
    last = await store.admit(replace(req, weight=1))
    assert last.admitted and last.calls_used == 5
    assert not (await store.admit(replace(req, weight=1))).admitted
    usage = await store.usage(customer, PERIOD)
    assert (usage.calls, usage.rejected) == (5, {"quota": 2})


async def test_block_quota_on_records_refuses_once_used_up(store: Store, customer: str) -> None:
    req = request(customer, records=Meter(10))
    assert (await store.admit(req)).admitted
    await store.settle(settlement(req, 9))
    decision = await store.admit(req)
    assert decision.admitted and decision.records_used == 9
    # a response may carry more records than remain: it is delivered, the quota then reads used up
    await store.settle(settlement(req, 5))
    refused = await store.admit(req)
    assert (refused.reason, refused.violated, refused.records_used) == ("quota", ("records-period",), 14)


async def test_both_quotas_are_named_when_both_are_used_up(store: Store, customer: str) -> None:
    req = request(customer, calls=Meter(1), records=Meter(1))
    assert (await store.admit(req)).admitted
    await store.settle(settlement(req, 1))
    refused = await store.admit(req)
    assert refused.violated == ("calls-period", "records-period")


async def test_a_full_window_is_reported_before_a_used_up_quota(store: Store, customer: str) -> None:
    req = request(customer, windows=(Window("1d", 1, DAY),), calls=Meter(1))
    assert (await store.admit(req)).admitted
    refused = await store.admit(req)
    assert (refused.reason, refused.violated) == ("rate_limited", ("1d",))


async def test_billed_meters_serve_past_the_quota_until_the_spend_cap(store: Store, customer: str) -> None:
    calls = Meter(2, unit=1, price_micros=500_000)  # $0.50 per call past 2
    req = request(customer, calls=calls, cap=100)
    decisions = [await store.admit(req) for _ in range(5)]
    assert [d.admitted for d in decisions] == [True, True, True, True, False]
    assert [d.spend_cents for d in decisions] == [0, 0, 0, 50, 100]  # spend before each call
    capped = decisions[-1]
    assert (capped.reason, capped.violated) == ("spend_cap", ())
    assert capped.retry_after == pytest.approx(req.period_end - capped.now, abs=1e-6)
    assert capped.calls_used == 4
    assert (await store.usage(customer, PERIOD)).rejected == {"spend_cap": 1}


@pytest.mark.parametrize("records_used", [1, 999, 1000, 1001, 1499, 1500, 1501, 123_456_789])
async def test_spend_is_the_half_up_cent_formula_of_billing(store: Store, customer: str, records_used: int) -> None:
    calls = Meter(0, unit=1000, price_micros=1_000_000)  # $1 per 1000 calls
    records = Meter(0, unit=1000, price_micros=5_000_000)  # $5 per 1000 records
    req = request(customer, calls=calls, records=records)
    assert (await store.admit(req)).admitted
    await store.settle(settlement(req, records_used))
    decision = await store.admit(req)
    assert decision.spend_cents == spend_cents(1, records_used, calls, records)


async def test_a_spend_exactly_at_the_cap_refuses(store: Store, customer: str) -> None:
    records = Meter(0, unit=1, price_micros=5_000)  # $0.005 per record, X's pay-per-use price
    req = request(customer, records=records, cap=50_000)
    assert (await store.admit(req)).admitted
    await store.settle(settlement(req, 99_999))  # $499.995: rounds half-up to 50000 cents
    refused = await store.admit(req)
    assert (refused.spend_cents, refused.reason) == (50_000, "spend_cap")


async def test_rejected_counters_count_each_reason(store: Store, customer: str) -> None:
    window = (Window("1d", 1, DAY),)
    assert (await store.admit(request(customer, windows=window))).admitted
    await store.admit(request(customer, windows=window))
    await store.admit(request(customer, windows=window))
    await store.admit(request(customer, calls=Meter(1)))
    await store.admit(request(customer, calls=Meter(0, unit=1, price_micros=10_000), cap=1))
    usage = await store.usage(customer, PERIOD)
    assert usage.rejected == {"rate_limited": 2, "quota": 1, "spend_cap": 1}
    assert usage.calls == 1


# usage counters ------------------------------------------------------------------------------------------


async def test_usage_of_an_empty_period(store: Store, customer: str) -> None:
    assert await store.usage(customer, "2020-01") == Usage()
    assert await store.daily(customer, ["2020-01-01"]) == [DayUsage("2020-01-01")]


async def test_usage_by_route_by_key_and_by_day(store: Store, customer: str) -> None:
    search = request(customer, key_id="k1", route="GET /v1/posts/search", day="2026-11-29")
    archive = request(customer, key_id="k2", route="GET /v1/posts/archive", weight=5, day="2026-11-30")
    for req, records in ((search, 10), (search, 20), (archive, 7)):
        assert (await store.admit(req)).admitted
        await store.settle(settlement(req, records))
    await store.settle(settlement(search, 0))  # nothing to count

    usage = await store.usage(customer, PERIOD)
    assert (usage.calls, usage.records, usage.rejected) == (7, 37, {})
    assert usage.by_route == {"GET /v1/posts/search": Counts(2, 30), "GET /v1/posts/archive": Counts(5, 7)}
    assert usage.by_key == {"k1": Counts(2, 30), "k2": Counts(5, 7)}

    days = await store.daily(customer, ["2026-11-28", "2026-11-29", "2026-11-30"])
    assert days == [
        DayUsage("2026-11-28"),
        DayUsage("2026-11-29", 2, 30, {"GET /v1/posts/search": Counts(2, 30)}, {"k1": Counts(2, 30)}),
        DayUsage("2026-11-30", 5, 7, {"GET /v1/posts/archive": Counts(5, 7)}, {"k2": Counts(5, 7)}),
    ]
    assert await store.daily(customer, []) == []


async def test_refunds_and_uncounted_responses_settle_on_every_store(store: Store, customer: str) -> None:
    """Issue 10: a settlement with negative calls gives a call back (route, key and day too), and
    uncounted responses add up in the period. Each settle is its own batch on Redis: before
    meter.lua loaded the field, every batch wrote its own count over the total (3 read 1)."""
    search = request(customer, key_id="k1", weight=3)
    for _ in range(3):
        assert (await store.admit(search)).admitted
    await store.settle(settlement(search, 0, calls=-3))  # one of them answered 500: refunded
    for _ in range(3):
        await store.settle(settlement(search, 0, uncounted=1))
    await store.settle(settlement(search, 4, uncounted=1))
    usage = await store.usage(customer, PERIOD)
    assert (usage.calls, usage.records, usage.uncounted) == (6, 4, 4)
    assert usage.by_route == {"GET /v1/posts/search": Counts(6, 4)} and usage.by_key == {"k1": Counts(6, 4)}
    [day] = await store.daily(customer, [TODAY])
    assert (day.calls, day.records) == (6, 4)
    # a refund of every call leaves nothing behind
    other = request(customer, key_id="k2", route="GET /v1/other")
    assert (await store.admit(other)).admitted
    await store.settle(settlement(other, 0, calls=-1))
    usage = await store.usage(customer, PERIOD)
    assert "GET /v1/other" not in usage.by_route and "k2" not in usage.by_key


async def test_periods_are_counted_apart(store: Store, customer: str) -> None:
    req = request(customer, calls=Meter(1))
    assert (await store.admit(req)).admitted
    assert (await store.admit(replace(req, period_id="2026-12"))).admitted
    assert (await store.usage(customer, "2026-12")).calls == 1


async def test_each_period_and_day_counts_apart_back_and_forth(store: Store, customer: str) -> None:
    """One customer, key and route in two days, then in another period on the same day (its
    anchor moved), and a response of the first day settled after the others (a request in
    flight at midnight): each counts in its own. The memory store keeps a customer's counting
    cells for one period and day: dropped at a change of either."""
    nov = request(customer, key_id="k1")
    tomorrow = replace(nov, day="2026-11-30")
    moved = replace(tomorrow, period_id="2026-12")
    for req in (nov, tomorrow, moved):
        assert (await store.admit(req)).admitted
    for req, records in ((nov, 3), (tomorrow, 5), (moved, 7), (nov, 1)):
        await store.settle(settlement(req, records))

    usage = await store.usage(customer, PERIOD)
    assert (usage.calls, usage.records) == (2, 9)
    assert usage.by_route == {nov.route: Counts(2, 9)} and usage.by_key == {"k1": Counts(2, 9)}
    usage = await store.usage(customer, "2026-12")
    assert (usage.calls, usage.records) == (1, 7)
    assert usage.by_route == {nov.route: Counts(1, 7)} and usage.by_key == {"k1": Counts(1, 7)}
    days = await store.daily(customer, [TODAY, "2026-11-30"])
    assert [(day.calls, day.records, day.by_key) for day in days] == [
        (1, 4, {"k1": Counts(1, 4)}),
        (2, 12, {"k1": Counts(2, 12)}),
    ]


async def test_unlisted_route_labels_are_bounded_per_period(store: Store, customer: str) -> None:
    def unlisted(i: int) -> AdmitRequest:
        return request(customer, route=f"GET /unlisted/{i}", listed=False)

    for i in range(MAX_UNLISTED_ROUTES + 5):
        assert (await store.admit(unlisted(i))).admitted
    assert (await store.admit(unlisted(3))).admitted  # a label already kept keeps counting
    assert (await store.admit(request(customer, route="GET /listed"))).admitted  # listed: never bounded
    await store.settle(settlement(unlisted(500), 9))
    await store.settle(settlement(unlisted(0), 4))

    by_route = (await store.usage(customer, PERIOD)).by_route
    assert len(by_route) == MAX_UNLISTED_ROUTES + 2
    assert by_route[OTHER_ROUTE] == Counts(5, 9)
    assert by_route["GET /unlisted/3"] == Counts(2, 0)
    assert by_route["GET /unlisted/0"] == Counts(1, 4)
    assert by_route["GET /listed"] == Counts(1, 0)
    assert "GET /unlisted/200" not in by_route
    day = (await store.daily(customer, [TODAY]))[0]
    assert day.by_route[OTHER_ROUTE] == Counts(5, 9)


# customers and keys --------------------------------------------------------------------------------------


async def test_customers_create_get_list_put(store: Store, unique_customer: Callable[[str], str]) -> None:
    a, b = unique_customer("a"), unique_customer("b")
    assert await store.list_customers() == []
    assert await store.get_customer(a) is None
    first = CustomerRecord(b, "pro", anchor_day=15, created_at=1764000000.25)
    await store.create_customer(first)
    await store.create_customer(CustomerRecord(a, "free"))
    with pytest.raises(CustomerExists):
        await store.create_customer(CustomerRecord(b, "free"))
    assert await store.get_customer(b) == first
    assert [record.id for record in await store.list_customers()] == [a, b]

    changed = replace(first, plan="enterprise", status="suspended")
    await store.put_customer(changed)
    assert await store.get_customer(b) == changed
    created = CustomerRecord(unique_customer("c"), "free")
    await store.put_customer(created)  # put creates too
    assert await store.get_customer(created.id) == created
    assert len(await store.list_customers()) == 3


async def test_customer_ids_with_odd_characters(store: Store) -> None:
    for name in ("a:b", "{c:x}", "ü é/%", "x}:p:2026-11"):
        await store.create_customer(CustomerRecord(name, "free"))
        assert (await store.get_customer(name)) == CustomerRecord(name, "free")
        assert (await store.admit(request(name, calls=Meter(1)))).admitted
    assert sorted(record.id for record in await store.list_customers()) == sorted(
        ["a:b", "{c:x}", "ü é/%", "x}:p:2026-11"]
    )
    assert (await store.usage("x", PERIOD)).calls == 0
    assert (await store.usage("x}:p:2026-11", PERIOD)).calls == 1


async def test_keys_add_find_list_revoke(store: Store, customer: str) -> None:
    first = KeyRecord("kid1", customer, "mg_live_ab", created_at=1000.5)
    second = KeyRecord("kid2", customer, "mg_live_cd", created_at=2000.0)
    await store.add_key("hash2", second)
    await store.add_key("hash1", first)
    await store.add_key("hash-other", KeyRecord("kid3", customer + "-x", "mg_live_ef", created_at=1.0))
    assert await store.find_key("hash1") == first
    assert await store.find_key("nope") is None
    assert await store.list_keys(customer) == [first, second]
    assert await store.list_keys(customer + "-none") == []

    assert await store.revoke_key("kid1") is True
    assert await store.revoke_key("unknown") is False
    found = await store.find_key("hash1")
    assert found is not None and found.revoked
    assert [key.revoked for key in await store.list_keys(customer)] == [True, False]


async def test_admission_sets_the_keys_last_used(store: Store, customer: str) -> None:
    await store.add_key("hash1", KeyRecord("kid1", customer, "mg_live_ab", created_at=1.0))
    assert (await store.find_key("hash1")).last_used is None  # type: ignore[union-attr]
    decision = await store.admit(request(customer, key_id="kid1"))
    found = await store.find_key("hash1")
    assert found is not None and found.last_used == pytest.approx(decision.now)
    assert (await store.list_keys(customer))[0].last_used == pytest.approx(decision.now)
    # a refused request is not a use of the key
    refused = await store.admit(request(customer, key_id="kid1", calls=Meter(0)))
    assert not refused.admitted
    assert (await store.find_key("hash1")).last_used == pytest.approx(decision.now)  # type: ignore[union-attr]


async def test_ping_and_close(store: Store) -> None:
    await store.ping()
    await store.aclose()
    await store.aclose()  # idempotent
