"""The ledger's ids, deadlines and carries, driven batch by batch against a real Redis and Cluster.

Each test sends crafted batches straight to the script (``RedisStore._run_batch``) in the
orders a fault produces: a retry of a batch that ran, a batch arriving after a later one, a
batch run past its deadline, a batch given up on that did or did not run. The figure checked
is always the usage the store ends with. The gateway-level fault tests (tests/test_faults*.py)
reach the same states through a real proxy and real outages.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from meterguard.errors import StoreUnavailable
from meterguard.plans import Window
from meterguard.store._ledger import MAX_USAGES, Admission, Carry, Reply, Usage, Work
from meterguard.store.base import Counts, Decision, Meter, Settlement
from meterguard.store.redis import RedisStore

from ..conftest import StoreFactory
from ..faultproxy import FaultProxy
from ..servers import RedisServer
from .test_store_behaviour import PERIOD, TODAY, request

HOUR = Window("1h", 1000, 3600)


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest, store_factory: StoreFactory) -> RedisStore:
    made = await store_factory(request.param)
    assert isinstance(made, RedisStore)
    return made


def admission(customer: str = "acme", *, served: bool = False, lease: int = 0, **changes: object) -> Admission:
    return Admission(replace(request(customer, windows=(HOUR,), **changes), lease=lease), served)  # type: ignore[arg-type]


def records(customer: str, count: int) -> Usage:
    usage = Usage((customer, PERIOD, int(time.time()) + 86_400, TODAY))
    usage.add_row(("GET /v1/posts/search", True, "kid1"), 0, count)
    return usage


async def send(store: RedisStore, seq: int, *works: Work, deadline_ms: int = 0) -> list[tuple[str, list[object]]]:
    _, _, replies = await store._run_batch(seq, deadline_ms, list(works))
    return [(reply.status, reply.admissions) for reply in replies]


async def counts(store: RedisStore, customer: str = "acme") -> tuple[int, int]:
    usage = await store.usage(customer, PERIOD)
    return usage.calls, usage.records


async def window_used(store: RedisStore) -> int:
    """Units counted in the hour window before a probe of one unit (another writer: the batches
    these tests number by hand are not the ledger's own)."""
    writer, store.ledger.writer = store.ledger.writer, "probe"
    try:
        decision = await store.admit(request("acme", windows=(HOUR,), weight=1, calls=Meter(None)))
    finally:
        store.ledger.writer = writer
    return HOUR.limit - decision.windows[0].remaining - 1


async def test_a_retried_batch_is_answered_from_the_record_and_applied_once(store: RedisStore) -> None:
    work = Work("acme", [admission(), admission()], [records("acme", 5)])
    first = await send(store, 1, work)
    again = await send(store, 1, work)  # the same batch after a lost reply
    assert first[0][0] == "ok" and again[0][0] == "dup"
    decided = [(r[0], r[4], r[5]) for r in first[0][1]]  # code, granted, flags: the decisions
    assert [(r[0], r[4], r[5]) for r in again[0][1]] == decided
    assert await counts(store) == (2, 5)


async def test_a_batch_arriving_after_a_later_one_applies_nothing(store: RedisStore) -> None:
    assert (await send(store, 2, Work("acme", [admission()])))[0][0] == "ok"
    late = await send(store, 1, Work("acme", [admission()], [records("acme", 7)]))
    assert late[0][0] == "stale"
    assert await counts(store) == (1, 0)


async def test_past_its_deadline_a_batch_voids_its_admissions_but_keeps_its_records(store: RedisStore) -> None:
    past = int(time.time() * 1000) - 5_000
    replies = await send(store, 1, Work("acme", [admission()], [records("acme", 3)]), deadline_ms=past)
    assert replies[0][1] == [[8]]  # expired
    assert await counts(store) == (0, 3)


async def test_a_batch_given_up_on_that_ran_is_undone_by_the_next(store: RedisStore) -> None:
    given_up = Work("acme", [admission(), admission(weight=2)], [records("acme", 4)])
    await send(store, 1, given_up)  # it ran, but its reply was lost: the requests got 503
    assert await counts(store) == (3, 4)
    carry = Carry(1, given_up.admissions, given_up.usages)
    await send(store, 2, Work("acme", carries=[carry]))
    assert await counts(store) == (0, 4)  # calls undone, records (served before) kept
    usage = await store.usage("acme", PERIOD)
    assert usage.by_route == {"GET /v1/posts/search": Counts(0, 4)} and usage.by_key == {"kid1": Counts(0, 4)}
    assert await window_used(store) == 0  # the window gave the units back too


async def test_a_batch_given_up_on_that_never_ran_applies_its_records_only(store: RedisStore) -> None:
    given_up = Work("acme", [admission()], [records("acme", 4)])
    carry = Carry(1, given_up.admissions, given_up.usages)
    await send(store, 2, Work("acme", [admission()], carries=[carry]))
    assert await counts(store) == (1, 4)  # the new admission, and the carried records once
    late = await send(store, 1, given_up)  # the lost batch turns up after all
    assert late[0][0] == "stale"
    assert await counts(store) == (1, 4)


async def test_fail_open_keeps_a_served_call_whether_or_not_its_batch_ran(store: RedisStore) -> None:
    ran = Work("acme", [admission(served=True)])
    await send(store, 1, ran)
    lost = Work("acme", [admission(served=True)])  # batch 2 never reaches the store
    carries = [Carry(1, ran.admissions, []), Carry(2, lost.admissions, [])]
    await send(store, 3, Work("acme", carries=carries))
    assert await counts(store) == (2, 0)  # both requests were served: both counted, once


async def test_a_carry_resolved_earlier_is_not_resolved_again(store: RedisStore) -> None:
    given_up = Work("acme", [admission()])
    await send(store, 1, given_up)
    carry = Carry(1, given_up.admissions, [])
    await send(store, 2, Work("acme", carries=[carry]))  # acknowledged, but its reply was lost too
    await send(store, 3, Work("acme", [admission()], carries=[carry]))  # so the writer carries it again
    assert await counts(store) == (1, 0)


async def test_a_refusal_no_client_saw_is_not_counted_as_a_refusal(store: RedisStore) -> None:
    given_up = Work("acme", [admission(calls=Meter(0))])
    await send(store, 1, given_up)
    assert (await store.usage("acme", PERIOD)).rejected == {"quota": 1}
    await send(store, 2, Work("acme", carries=[Carry(1, given_up.admissions, [])]))
    assert (await store.usage("acme", PERIOD)).rejected == {}


async def test_leased_units_of_a_lost_admission_go_back(store: RedisStore) -> None:
    given_up = Work("acme", [admission(served=True, lease=50)])
    replies = await send(store, 1, given_up)
    assert replies[0][1][0][4] == 50  # granted, and counted in the window
    assert await window_used(store) == 51
    await send(store, 2, Work("acme", carries=[Carry(1, given_up.admissions, [])]))
    assert await window_used(store) == 2  # the served call and the first probe stay; the lease went back
    assert await counts(store) == (3, 0)  # the served call and two probes


async def test_writers_are_independent(store: RedisStore) -> None:
    await send(store, 5, Work("acme", [admission()]))
    other = store.ledger.writer
    store.ledger.writer = "another-writer"
    try:
        assert (await send(store, 1, Work("acme", [admission()])))[0][0] == "ok"
    finally:
        store.ledger.writer = other
    assert await counts(store) == (2, 0)


async def test_customers_sharing_a_batch_are_counted_each_on_their_own(store_factory: StoreFactory) -> None:
    """meter.lua reuses its views of the hashes from one customer's group to the next: nothing
    the first group read or wrote may leak into the counts, windows or replies of the others."""
    store = await store_factory("redis")  # one server: every customer fits one script call
    assert isinstance(store, RedisStore)
    batches = [
        [
            Work("ann", [admission("ann"), admission("ann")], [records("ann", 5)]),
            Work("bob", [admission("bob")], [records("bob", 7)]),
            Work("cid", [], [records("cid", 3)]),  # usage only
            Work("dee", [admission("dee", key_id="kid9", route="GET /other", listed=False)]),
        ],
        [
            Work("dee", [admission("dee")], [records("dee", 2)]),
            Work("cid", [admission("cid"), admission("cid"), admission("cid")]),
            Work("bob", [], [records("bob", 1)]),
            Work("ann", [admission("ann")]),
        ],
    ]
    replies = [await send(store, seq, *works) for seq, works in enumerate(batches, 1)]
    # calls used, as each admission's reply counts them: only its own customer's
    assert [[r[1] for r in admitted] for _, admitted in replies[0]] == [[1, 2], [1], [], [1]]
    assert [[r[1] for r in admitted] for _, admitted in replies[1]] == [[2], [1, 2, 3], [], [3]]
    previous, current = replies[1][3][1][0][6:8]  # ann's hour window (both slots: an hour may turn)
    assert previous + current == 3  # her three calls, nobody else's
    assert {c: await counts(store, c) for c in ("ann", "bob", "cid", "dee")} == {
        "ann": (3, 5),
        "bob": (1, 8),
        "cid": (3, 3),
        "dee": (2, 2),
    }
    dee = await store.usage("dee", PERIOD)
    assert dee.by_key == {"key1": Counts(1, 0), "kid1": Counts(0, 2), "kid9": Counts(1, 0)}


async def test_an_admission_ends_at_its_budget_while_a_usage_batch_waits_for_redis(
    private_redis: RedisServer, fault_proxy: Callable[[int], FaultProxy]
) -> None:
    """A batch of usage only has no deadline: it is retried until Redis answers. An admission
    queued behind it must still end at its own budget (it used to wait as long as the outage)."""
    proxy = fault_proxy(private_redis.port)
    store = RedisStore(f"{proxy.url}?socket_timeout=0.3", key_prefix="budget")
    try:
        assert (await store.admit(request("acme"))).admitted
        proxy.blackhole()
        await store.settle(Settlement("acme", "key1", "GET /v1/posts/search", True, PERIOD, 2_000_000_000, 5, TODAY))
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.admit(request("acme"))
        assert time.monotonic() - started < 1.0
    finally:
        proxy.heal()
        await store.aclose()


async def test_an_admission_in_flight_ends_at_its_budget_while_redis_does_not_answer(
    private_redis: RedisServer, fault_proxy: Callable[[int], FaultProxy]
) -> None:
    """The batch carrying an admission is given up on at the admission's budget, whatever its
    attempts wait for (a reply, a reconnect, a retry's pause): the request is answered 503, and
    the batch is carried until Redis says whether it ran. Once Redis is back, nothing is counted
    for it (it never ran) and the next admission goes through."""
    proxy = fault_proxy(private_redis.port)
    store = RedisStore(f"{proxy.url}?socket_timeout=0.3", key_prefix="inflight-budget")
    try:
        assert (await store.admit(request("acme"))).admitted
        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.admit(request("acme")), 5.0)  # without a deadline: until Redis is back
        assert time.monotonic() - started < 1.0
        proxy.heal()
        assert (await asyncio.wait_for(store.admit(request("acme")), 5.0)).admitted
        assert await counts(store) == (2, 0)
    finally:
        proxy.heal()
        await store.aclose()


async def test_a_settlement_waits_no_longer_than_its_budget_and_lands_once_redis_is_back(
    private_redis: RedisServer, fault_proxy: Callable[[int], FaultProxy]
) -> None:
    """Exact mode waits for a settlement to be applied, but only as long as an admission may
    wait: the response goes on, the ledger keeps the records and applies them when it can."""
    proxy = fault_proxy(private_redis.port)
    store = RedisStore(f"{proxy.url}?socket_timeout=0.3", key_prefix="settle-budget")
    try:
        for _ in range(3):
            assert (await store.admit(request("acme"))).admitted
        proxy.blackhole()
        started = time.monotonic()
        settlements = (
            store.settle(Settlement("acme", f"key{i}", "GET /v1/posts/search", True, PERIOD, 2_000_000_000, 5, TODAY))
            for i in range(3)
        )
        await asyncio.wait_for(asyncio.gather(*settlements), 5.0)  # without a budget: until Redis is back
        assert 0.25 <= time.monotonic() - started < 1.0
        proxy.heal()
        deadline = time.monotonic() + 15
        while await counts(store) != (3, 15) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert await counts(store) == (3, 15)
        started = time.monotonic()
        await store.settle(Settlement("acme", "key1", "GET /v1/posts/search", True, PERIOD, 2_000_000_000, 1, TODAY))
        assert time.monotonic() - started < 0.25  # applied, not timed out
        assert await counts(store) == (3, 16)
    finally:
        proxy.heal()
        await store.aclose()


async def test_admissions_never_queue_behind_a_flood_of_usage(store_factory: StoreFactory) -> None:
    """Every queued admission goes in the next batch, ahead of usage rows, which travel at most
    MAX_USAGES at a time: a request waits for the batch in flight and its own, never for the
    several batches a flush of every customer's usage takes. (One server: one batch in flight.)"""
    store = await store_factory("redis")
    assert isinstance(store, RedisStore)
    sent: list[Sequence[Work]] = []
    run = store._run_batch

    async def spy(seq: int, deadline_ms: int, works: Sequence[Work]) -> tuple[int, int, list[Reply]]:
        sent.append(works)
        return await run(seq, deadline_ms, works)

    store.ledger._run = spy
    flushed = [store.ledger.record(records(f"u{i}", 1)) for i in range(3 * MAX_USAGES)]
    decisions = await asyncio.gather(*(store.admit(request(f"a{i}", windows=(HOUR,))) for i in range(2 * MAX_USAGES)))
    assert all(decision.admitted for decision in decisions)
    await asyncio.gather(*flushed)
    # the first batch (usage only) was in flight when the admissions came: they all took the next
    assert [sum(len(work.admissions) for work in works) for works in sent] == [0, 2 * MAX_USAGES, 0]
    assert [sum(len(work.usages) for work in works) for works in sent] == [MAX_USAGES] * 3


async def test_a_reply_wakes_its_requests_and_sends_the_next_batch_without_extra_loop_turns(
    store_factory: StoreFactory,
) -> None:
    """Exact mode's requests wait on batch round trips, so every turn of the event loop between a
    reply and the requests it answers (or the batch that goes out next) is latency under load:
    the sender awaits the store itself, not a task of its own through asyncio.wait (three turns
    more, about 10% of mg-exact's throughput, docs/benchmarks.md)."""
    store = await store_factory("redis")
    assert isinstance(store, RedisStore)
    turns = 0

    async def tick() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)  # once per turn of the loop

    replied: list[int] = []  # the turn each batch's reply reached the ledger
    sent: list[int] = []  # the turn each batch left
    run = store._run_batch
    second: asyncio.Future[Decision] | None = None

    async def spy(seq: int, deadline_ms: int, works: Sequence[Work]) -> tuple[int, int, list[Reply]]:
        nonlocal second
        sent.append(turns)
        if second is None:  # queued while the first batch is in flight: it goes in the next
            second = asyncio.ensure_future(store.admit(request("acme", windows=(HOUR,))))
            await asyncio.sleep(0)
        result = await run(seq, deadline_ms, works)
        replied.append(turns)
        return result

    store.ledger._run = spy
    ticker = asyncio.ensure_future(tick())
    try:
        async with asyncio.timeout(5):  # not wait_for: its task would add turns of its own
            first = await store.admit(request("acme", windows=(HOUR,)))
            woke = turns
            assert second is not None
            assert first.admitted and (await second).admitted
    finally:
        ticker.cancel()
    assert woke - replied[0] <= 1  # the request runs in the turn after its reply
    assert sent[1] == replied[0]  # the next batch leaves in the turn the reply came
