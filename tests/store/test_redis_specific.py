"""What only the Redis stores can get wrong: expiry, script cache, outages, cancellation, big numbers."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from meterguard.billing import spend_cents
from meterguard.errors import StoreError, StoreUnavailable
from meterguard.plans import Window
from meterguard.store._redis_meter import STATE_TTL_SECONDS
from meterguard.store.base import AdmitRequest, CustomerRecord, KeyRecord, Meter, Settlement, Usage
from meterguard.store.cluster import RedisClusterStore
from meterguard.store.redis import PERIOD_AUDIT_SECONDS, RedisStore
from meterguard.windows import estimate, remaining, reset_after

from ..conftest import StoreFactory

DAY = 86_400
PERIOD = "2026-11"


def request(customer: str, **changes: object) -> AdmitRequest:
    fields: dict[str, object] = {
        "customer": customer,
        "key_id": "kid1",
        "route": "GET /v1/posts/search",
        "listed": True,
        "weight": 1,
        "windows": (Window("1m", 100, 60), Window("1d", 1000, DAY)),
        "strategy": "sliding",
        "period_id": PERIOD,
        "period_end": int(time.time()) + 20 * DAY,
        "calls": Meter(None),
        "records": Meter(None),
        "spend_cap_cents": None,
        "day": "2026-11-29",
    }
    fields.update(changes)
    return AdmitRequest(**fields)  # type: ignore[arg-type]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def raw_client(kind: str, redis_url: str, cluster_url: str, *, decode: bool = True) -> Redis | RedisCluster:
    if kind == "cluster":
        host, port = cluster_url.removeprefix("redis+cluster://").split(",")[0].split(":")
        return RedisCluster(host=host, port=int(port), decode_responses=decode)
    return Redis.from_url(redis_url, decode_responses=decode)


@pytest.fixture(params=["redis", "cluster"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def raw(kind: str, redis_url: str, cluster_url: str) -> AsyncIterator[Redis | RedisCluster]:
    client = raw_client(kind, redis_url, cluster_url)
    yield client
    await client.aclose()


@pytest.fixture
async def raw_bytes(kind: str, redis_url: str, cluster_url: str) -> AsyncIterator[Redis | RedisCluster]:
    """``raw`` that returns bytes: for fields that are not text (a window's packed counts)."""
    client = raw_client(kind, redis_url, cluster_url, decode=False)
    yield client
    await client.aclose()


async def test_every_counter_key_expires(
    kind: str, store_factory: StoreFactory, raw: Redis | RedisCluster, key_prefix: str
) -> None:
    """Every key a metering script writes carries a TTL set by that same script (limits#14): the
    period counters (the period end plus the audit time), the customer's state and event stream."""
    store = await store_factory(kind)
    await store.create_customer(CustomerRecord("acme", "pro"))
    await store.add_key("hash1", KeyRecord("kid1", "acme", "mg_live_ab", created_at=1.0))
    end = int(time.time()) + 20 * DAY
    req = request("acme", period_end=end, calls=Meter(3))
    for _ in range(4):  # three admitted, one refused (the rejected counter is written too)
        await store.admit(req)
    await store.admit(request("acme", period_id="2026-12", calls=Meter(0)))  # a period only refusals wrote
    await store.settle(Settlement("acme", "kid1", req.route, True, PERIOD, end, 5, "2026-11-30"))

    keys = [key async for key in raw.scan_iter(match=f"{key_prefix}:*")]
    metadata = {":customer", ":customers", ":keys"}
    counters = sorted(key for key in keys if not any(key.endswith(m) for m in metadata) and ":key" not in key)
    tag = f"{key_prefix}:{{c:acme}}"
    assert counters == sorted([f"{tag}:s", f"{tag}:events", f"{tag}:p:{PERIOD}", f"{tag}:p:2026-12"])
    for key in counters:
        assert await raw.ttl(key) > 0, key
    period_ttl = await raw.ttl(f"{tag}:p:{PERIOD}")
    assert period_ttl == pytest.approx(end + PERIOD_AUDIT_SECONDS - time.time(), abs=5)
    # customers and keys are records, not counters: they are kept until deleted
    for key in keys:
        if key not in counters:
            assert await raw.ttl(key) == -1, key


async def test_noscript_is_recovered_by_loading_the_script_once(
    kind: str, store_factory: StoreFactory, raw: Redis | RedisCluster
) -> None:
    """SCRIPT FLUSH empties the script cache of the whole server (every node of the cluster), as a
    restart or failover does. That is acceptable on the shared test server only because every
    client reloads its scripts on NOSCRIPT by design: this test is the proof that it does.
    The admission must then count exactly once."""
    store = await store_factory(kind)
    assert (await store.admit(request("acme"))).calls_used == 1
    if isinstance(raw, RedisCluster):
        await raw.execute_command("SCRIPT", "FLUSH", target_nodes=raw.get_primaries())
    else:
        await raw.script_flush()
    assert (await store.admit(request("acme"))).calls_used == 2
    await store.settle(Settlement("acme", "kid1", "GET /x", False, PERIOD, int(time.time()) + DAY, 3, "2026-11-29"))
    assert (await store.usage("acme", PERIOD)).records == 3


async def test_sliding_estimate_matches_windows_py_with_a_previous_slot(
    kind: str, store_factory: StoreFactory, raw: Redis | RedisCluster, key_prefix: str
) -> None:
    """The Lua arithmetic against the Python reference, with a seeded previous slot."""
    store = await store_factory(kind)
    window = Window("1h", 50, 3600)
    now = time.time()
    index = math.floor(now / 3600)
    # the state hash keeps a window's counts in one field: slot index, previous and current count
    await raw.hset(f"{key_prefix}:{{c:acme}}:s", "w:1h", packed(index, 40, 10))
    decisions = [await store.admit(request("acme", windows=(window,), weight=3)) for _ in range(6)]
    current = 10
    for decision in decisions:
        assert math.floor(decision.now / 3600) == index, "crossed an hour boundary: rerun"
        elapsed = decision.now - index * 3600
        used = estimate(40, current, elapsed, 3600, True)
        admitted = used + 3 <= 50
        assert decision.admitted is admitted
        after = current + 3 if admitted else current
        assert decision.windows[0].remaining == remaining(50, estimate(40, after, elapsed, 3600, True))
        assert decision.windows[0].reset_after == pytest.approx(reset_after(40, after, elapsed, 3600, 50, True, 3))
        current = after


def packed(index: int, previous: int, current: int) -> bytes:
    """A window's field in the state hash, as store/lua/meter.lua packs it."""
    return struct.pack("<ddd", index, previous, current)


async def test_a_window_is_one_field_and_the_layout_before_it_is_read_once_then_replaced(
    kind: str, store_factory: StoreFactory, raw: Redis | RedisCluster, raw_bytes: Redis | RedisCluster, key_prefix: str
) -> None:
    """A window's counts are one packed field (slot index, previous and current count), so the
    state hash never grows by a field per slot. A window still in the layout before it (a field
    per slot, and the window's own field naming the last slot written) is read once, counts
    kept, and its slot fields deleted."""
    store = await store_factory(kind)
    state = f"{key_prefix}:{{c:acme}}:s"
    hour, day = Window("1h", 50, 3600), Window("1d", 500, DAY)
    now = time.time()
    h, d = math.floor(now / 3600), math.floor(now / DAY)
    # 1h last wrote three slots ago (nothing it counted is read now); 1d wrote the slot before
    # this one (the sliding estimate still reads it: 4)
    await raw.hset(
        state,
        mapping={
            f"w:1h@{h - 4}": 7, f"w:1h@{h - 3}": 5, "w:1h": h - 3,
            f"w:1d@{d - 2}": 9, f"w:1d@{d - 1}": 4, "w:1d": d - 1,
        },
    )  # fmt: skip
    decision = await store.admit(request("acme", windows=(hour, day)))
    assert decision.admitted
    assert math.floor(decision.now / 3600) == h, "crossed an hour boundary: rerun"
    elapsed = decision.now - d * DAY
    assert decision.windows[0].remaining == 49
    assert decision.windows[1].remaining == remaining(500, estimate(4, 1, elapsed, DAY, True))
    fields = await raw_bytes.hgetall(state)
    windows = {name: value for name, value in fields.items() if name.startswith(b"w:")}
    assert windows == {b"w:1h": packed(h, 0, 1), b"w:1d": packed(d, 4, 1)}
    await store.admit(request("acme", windows=(hour, day)))  # the same slot: the same two fields
    fields = await raw_bytes.hgetall(state)
    assert {name: value for name, value in fields.items() if name.startswith(b"w:")} == {
        b"w:1h": packed(h, 0, 2), b"w:1d": packed(d, 4, 2),
    }  # fmt: skip


async def test_the_state_hash_s_expiry_is_refreshed_on_a_day_s_first_batch_and_not_again(
    kind: str, store_factory: StoreFactory, raw: Redis | RedisCluster, key_prefix: str
) -> None:
    """A customer's state hash lives STATE_TTL from its last refresh, made once a day: the hash
    keeps the day of the last one (``e``), and only a batch of another day refreshes it."""
    store = await store_factory(kind)
    state = f"{key_prefix}:{{c:acme}}:s"
    assert (await store.admit(request("acme"))).admitted  # a writer's first batch refreshes anyway
    today = int(time.time() // DAY)
    assert await raw.hget(state, "e") == str(today)
    await raw.expire(state, 1000)
    assert (await store.admit(request("acme"))).admitted  # the same day: left as it is
    assert 0 < await raw.ttl(state) <= 1000
    await raw.hset(state, "e", str(today - 1))  # as if the last refresh was yesterday's
    assert (await store.admit(request("acme"))).admitted
    assert await raw.ttl(state) > STATE_TTL_SECONDS - 60
    assert await raw.hget(state, "e") == str(today)


async def test_spend_is_exact_beyond_double_precision(
    kind: str, store_factory: StoreFactory, raw: Redis | RedisCluster, key_prefix: str
) -> None:
    """26 billion records at $5/1000 is 2.6e17 micro-units: past 2^53, where Lua doubles round."""
    store = await store_factory(kind)
    rng = random.Random(7)
    cases = [(780_000_000, 26_000_000_000, 1000, 1_000_000, 1000, 5_000_000)]
    while len(cases) < 60:
        case = (
            rng.randrange(0, 2**40),
            rng.randrange(0, 2**45),
            rng.choice([1, 7, 1000, 999_983]),
            rng.randrange(1, 10**9),
            rng.choice([1, 3, 1000, 100_000]),
            rng.randrange(1, 10**9),
        )
        calls_used, records_used, calls_unit, calls_price, records_unit, records_price = case
        # amounts themselves fit in 2^53 cents ($90 trillion); the products on the way do not
        meters = Meter(5, calls_unit, calls_price), Meter(11, records_unit, records_price)
        if spend_cents(calls_used, records_used, *meters) < 2**53:
            cases.append(case)
    assert sum(1 for case in cases if 2 * case[1] * case[5] >= 2**53) > 10
    for calls_used, records_used, calls_unit, calls_price, records_unit, records_price in cases:
        await raw.hset(f"{key_prefix}:{{c:acme}}:p:{PERIOD}", mapping={"calls": calls_used, "records": records_used})
        calls = Meter(5, calls_unit, calls_price)
        records = Meter(11, records_unit, records_price)
        decision = await store.admit(request("acme", windows=(), calls=calls, records=records))
        assert decision.spend_cents == spend_cents(calls_used, records_used, calls, records)


@pytest.mark.parametrize(
    ("route", "key_id", "stored_route", "stored_key_id"),
    [
        # UTF-8 of 2 to 4 bytes: exactly as sent
        (
            "GET /v1/caf\u00e9/\U0001f642/\u65e5",
            "kid-\u00fc\U0001f511",
            "GET /v1/caf\u00e9/\U0001f642/\u65e5",
            "kid-\u00fc\U0001f511",
        ),
        # lone surrogates: no UTF-8 carries them; before, the batch failed in the script forever
        ("GET /v1/\ud800/x", "kid-\udfff", "GET /v1/\ufffd/x", "kid-\ufffd"),
    ],
    ids=["utf8", "surrogates"],
)
async def test_labels_and_key_ids_come_back_as_they_were_sent(
    kind: str, store_factory: StoreFactory, route: str, key_id: str, stored_route: str, stored_key_id: str
) -> None:
    """The batch goes to the script as MessagePack: the audit cells name the route and key exactly
    as the gateway did, and what UTF-8 cannot carry is recorded with U+FFFD in its place."""
    store = await store_factory(kind)
    assert isinstance(store, RedisStore)
    period_end = int(time.time()) + 20 * DAY
    admitted = await store.admit(request("acme", route=route, key_id=key_id, listed=False, period_end=period_end))
    assert admitted.admitted
    await store.settle(
        Settlement(
            customer="acme",
            period_id=PERIOD,
            period_end=period_end,
            day="2026-11-29",
            route=route,
            listed=False,
            key_id=key_id,
            calls=0,
            records=7,
        )
    )
    usage = await store.usage("acme", PERIOD)
    assert (usage.calls, usage.records) == (1, 7)
    assert list(usage.by_route) == [stored_route]
    assert list(usage.by_key) == [stored_key_id]
    assert (usage.by_route[stored_route].calls, usage.by_route[stored_route].records) == (1, 7)


async def test_wrong_type_is_a_store_error_not_an_outage(
    kind: str, store_factory: StoreFactory, raw: Redis | RedisCluster, key_prefix: str
) -> None:
    store = await store_factory(kind)
    await raw.set(f"{key_prefix}:{{c:acme}}:p:{PERIOD}", "not a hash")
    with pytest.raises(StoreError) as caught:
        await store.usage("acme", PERIOD)
    assert not isinstance(caught.value, StoreUnavailable)
    with pytest.raises(StoreError):
        await store.admit(request("acme"))


@pytest.mark.parametrize("store_class", [RedisStore, RedisClusterStore])
async def test_an_unreachable_store_raises_store_unavailable(store_class: type[RedisStore]) -> None:
    scheme = "redis+cluster" if store_class is RedisClusterStore else "redis"
    store = store_class(f"{scheme}://127.0.0.1:{closed_port()}")
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.admit(request("acme"))
        with pytest.raises(StoreUnavailable):
            await store.usage("acme", PERIOD)
    finally:
        await store.aclose()


def test_construction_does_no_io_and_needs_no_event_loop() -> None:
    for store in (
        RedisStore(f"redis://127.0.0.1:{closed_port()}/0"),
        RedisClusterStore(f"redis+cluster://127.0.0.1:{closed_port()},127.0.0.1:{closed_port()}"),
    ):
        assert store._redis is None
        assert "redis" in repr(store)


def test_the_url_password_is_not_shown() -> None:
    assert "hunter2" not in repr(RedisStore("redis://user:hunter2@127.0.0.1:6379/0"))


# cancellation -----------------------------------------------------------------------------------------


class DelayingProxy:
    """A TCP proxy to Redis that holds every reply for ``delay`` seconds."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_writer, upstream_writer]
        up = asyncio.create_task(self._pump(client_reader, upstream_writer, delayed=False))
        down = asyncio.create_task(self._pump(upstream_reader, client_writer, delayed=True))
        self._tasks |= {up, down}
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        for writer in (client_writer, upstream_writer):
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        await self._server.wait_closed()


async def test_a_cancelled_admit_never_hands_its_reply_to_another_caller(
    redis_url: str, key_prefix: str, unique_customer: Callable[[str], str], store_factory: StoreFactory
) -> None:
    """CVE-2023-28858/28859, redis-py#2665: a request task cancelled (a client disconnect) while
    its command is in flight must not leave the reply on a pooled connection for the next caller.
    The proxy holds replies back so the cancellation lands mid-flight, then lets them through
    while other commands run on the same store. redis-py 8 drops the connection on cancellation;
    this test checks that it still does."""
    await store_factory("redis")  # cleans this test's prefix up at the end
    proxy = DelayingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    port = await proxy.start()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", key_prefix=key_prefix)
    try:
        customers = [unique_customer("c") for _ in range(6)]
        for customer in customers:
            await store.create_customer(CustomerRecord(customer, f"plan-of-{customer}"))
        await store.admit(request(customers[0]))  # scripts cached, one connection pooled

        proxy.delay = 0.3
        in_flight = [asyncio.create_task(store.admit(request(customer))) for customer in customers]
        lookups = [asyncio.create_task(store.get_customer(customer)) for customer in customers]
        await asyncio.sleep(0.1)  # every command sent, no reply yet
        for task in in_flight[::2] + lookups[1::2]:
            task.cancel()
        results = await asyncio.gather(*in_flight, *lookups, return_exceptions=True)
        admits, records = results[: len(customers)], results[len(customers) :]
        for i, customer in enumerate(customers):
            if i % 2 == 0:
                assert isinstance(admits[i], asyncio.CancelledError)
                assert isinstance(records[i], CustomerRecord) and records[i].id == customer  # type: ignore[union-attr]
            else:
                assert admits[i].admitted and admits[i].calls_used == 1  # type: ignore[union-attr]
                assert isinstance(records[i], asyncio.CancelledError)

        # the held-back replies of the cancelled commands arrive now; nobody may read them
        proxy.delay = 0.0
        await asyncio.sleep(0.4)
        for _ in range(3):
            for customer in customers:
                record = await store.get_customer(customer)
                assert record is not None and record.plan == f"plan-of-{customer}"
                usage = await store.usage(customer, PERIOD)
                assert isinstance(usage, Usage)
            await store.ping()
        decision = await store.admit(request(customers[1]))
        assert decision.calls_used == 2
        assert proxy.connections > 1  # the cancelled commands' connections were dropped, not reused
    finally:
        await store.aclose()
        await proxy.close()


async def test_settle_survives_cancellation_when_shielded(
    redis_url: str, key_prefix: str, store_factory: StoreFactory
) -> None:
    """The middleware shields settle(): a client disconnect must not lose billed records."""
    await store_factory("redis")  # cleans this test's prefix up at the end
    proxy = DelayingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    port = await proxy.start()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", key_prefix=key_prefix)
    try:
        await store.admit(request("acme"))
        proxy.delay = 0.2
        settle = Settlement(
            "acme", "kid1", "GET /v1/posts/search", True, PERIOD, int(time.time()) + DAY, 9, "2026-11-29"
        )
        inner = asyncio.ensure_future(store.settle(settle))

        async def request_task() -> None:
            await asyncio.shield(inner)

        outer = asyncio.create_task(request_task())
        await asyncio.sleep(0.05)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        await inner
        proxy.delay = 0.0
        assert (await store.usage("acme", PERIOD)).records == 9
    finally:
        await store.aclose()
        await proxy.close()


async def test_an_export_group_nobody_uses_does_not_hold_the_stream_forever(
    kind: str, store_factory: StoreFactory, raw: Redis | RedisCluster, key_prefix: str
) -> None:
    """Trimming follows the slowest export group, but a group idle for longer than
    events.keep_exported_seconds (a file nobody exports to any more) holds nothing back."""
    store = await store_factory(kind)
    assert isinstance(store, RedisStore)
    store.events_keep_exported = 1
    for i in range(5):
        await store.append_event("acme", {"v": "1", "type": "note", "n": str(i)})
    read_by_stale = await store.read_events("acme", "stale", "c1", 100)  # read, never acknowledged
    assert len(read_by_stale) == 5
    await asyncio.sleep(1.3)
    exported = await store.read_events("acme", "active", "c1", 100)
    await store.ack_events("acme", "active", [event_id for event_id, _ in exported])
    assert await raw.xlen(f"{key_prefix}:{{c:acme}}:events") == 0


def test_a_batch_goes_as_messagepack_and_as_json_only_past_64_bits() -> None:
    """meter.lua reads JSON when the argument starts with '{', MessagePack otherwise."""
    from meterguard.store._redis_meter_wire import batch_payload

    assert batch_payload({"q": 1, "g": [["acme", "caf\u00e9"]]})[:1] != b"{"
    assert batch_payload({"q": 1, "g": [["acme", 2**64]]})[:1] == b"{"
