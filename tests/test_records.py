"""Records you can bill from (CONTRACT 11, issue 10): counted from top-level arrays and the
``json_field`` array, never skipped silently, not billed for a status the plan does not bill, and
what ``scope["meterguard"]`` says is left.

In-process through httpx.ASGITransport on every store (memory, redis, cluster), with the usage
read through the admin API; the same promises through 2 uvicorn workers on Redis at the end.

Seen failing before the change: top-level arrays counted 0, the over-limit and not-JSON bodies
left no trace (``uncounted`` missing), the 500 and the non-billable 404 were billed, and a billed
plan read ``records_remaining: 0`` with quota left to bill.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterguard import MeterGuard, parse_config
from meterguard.customers import Directory
from meterguard.periods import period_for
from meterguard.records import StreamCounter, counter, json_counter
from meterguard.store import store_from_url
from meterguard.store.base import Store
from meterguard.store.redis import RedisStore

from .conftest import REDIS_URL, drop_keys
from .faultproxy import FaultProxy
from .servers import RedisServer
from .support import SEEN, data_app
from .wave import Gateway

TOKEN = "records-test-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}

PLANS = """
version: 1
consistency: {mode}
records: {{max_body_bytes: 400}}
routes:
  - {{match: "GET /health", public: true}}
plans:
  free:
    quotas: {{calls: 100, records: 1000}}
  strict:
    quotas: {{calls: 100}}
    billable_status: ["2xx"]
  paid:
    quotas: {{calls: 3, records: 10}}
    overage:
      calls: {{unit: 1, price: "0.10"}}
      records: {{unit: 1, price: "0.10"}}
      spend_cap: "1.00"
  mixed:
    quotas: {{calls: 5, records: 10}}
    overage:
      records: {{unit: 1, price: "0.10"}}
"""


# -- the counter on its own ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b'{"data": [1, 2, 3]}', 3),
        (b"[1, 2, 3, 4]", 4),
        (b"[]", 0),
        (b'{"data": []}', 0),
        (b'{"data": {"a": [1, 2]}}', 0),
        (b'{"meta": {"data": [1, 2]}, "data": [[1, 2], {"data": [3]}]}', 2),
        (b'{"other": [1, 2]}', 0),
        (b'"a string"', 0),
        (b"12", 0),
        (b"null", 0),
        (b' \n\t{"data": [1]}\r\n', 1),
        (b'{"data": [1, 2', None),
        (b'{"data": [1, 2]} x', None),
        (b'{"data": [1,, 2]}', None),
        (b"{'data': [1]}", None),
        (b"[" * 5000, None),
        (b"\xff\xfe", None),
    ],
)
@pytest.mark.parametrize("make", [counter, json_counter], ids=["msgspec", "json"])
def test_counter(make: Callable[[str], Callable[[bytes], int | None]], body: bytes, count: int | None) -> None:
    assert make("data")(body) == count


def test_counter_field_may_be_any_json_name() -> None:
    for field in ("items", "data-set", "class", "résultats", ""):
        body = json.dumps({field: [1, 2], "data": [1]}).encode()
        assert counter(field)(body) == 2, field


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.text(alphabet='ab"\\[]{},: \u00e9', max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.sampled_from(["data", "x", "meta", 'd"a\\']), children)
    ),
    max_leaves=30,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(document=_json, cut=st.integers(min_value=0, max_value=10_000), indent=st.sampled_from([None, 2]))
def test_msgspec_and_json_count_alike(document: Any, cut: int, indent: int | None) -> None:
    """Whole documents and their prefixes (mostly not JSON): the fast counter agrees with json."""
    body = json.dumps(document, indent=indent).encode()
    fast, reference = counter("data"), json_counter("data")
    assert fast(body) == reference(body)
    assert fast(body[:cut]) == reference(body[:cut])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    document=_json,
    cuts=st.lists(st.integers(min_value=0, max_value=2_000), max_size=8),
    indent=st.sampled_from([None, 1]),
    ascii_only=st.booleans(),
)
def test_stream_counter_counts_as_msgspec_does(
    document: Any, cuts: list[int], indent: int | None, ascii_only: bool
) -> None:
    """Over records.max_body_bytes the body is counted as it streams, chunk by chunk, cut anywhere
    (inside strings, escapes, numbers and keys): the same count as the whole-body parse."""
    body = json.dumps(document, indent=indent, ensure_ascii=ascii_only).encode()
    stream = StreamCounter("data")
    start = 0
    for cut in sorted({min(cut, len(body)) for cut in cuts}) + [len(body)]:
        stream.feed(body[start:cut])
        start = cut
    assert stream.end() == counter("data")(body)


@pytest.mark.parametrize(
    "body",
    [b'{"data": [1, 2', b"[1, 2", b'{"data": [{"a": 1}', b"[", b'{"da', b'{"data": [1, 2]]', b"nul", b""],
)
def test_stream_counter_reads_none_for_what_never_ends(body: bytes) -> None:
    stream = StreamCounter("data")
    for index in range(len(body)):
        stream.feed(body[index : index + 1])
    assert stream.end() is None or body == b'{"data": [1, 2]]'  # the array ended: the rest is not read


def test_stream_counter_escapes_across_chunks() -> None:
    body = json.dumps({"data": ['a\\"]', "\\", '"[,{', "x"], "after": "]"}).encode()
    for size in range(1, 8):
        stream = StreamCounter("data")
        for index in range(0, len(body), size):
            stream.feed(body[index : index + size])
        assert stream.end() == 4, size


# -- through the middleware, on every store ------------------------------------------------------


Client = tuple[httpx.AsyncClient, MeterGuard]


@pytest.fixture
async def gateway(store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Awaitable[Client]]]:
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    made: list[httpx.AsyncClient] = []

    async def make(mode: str = "exact") -> Client:
        guard = MeterGuard(data_app, config=parse_config(PLANS.format(mode=mode)), store=store)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test")
        made.append(client)
        return client, guard

    yield make
    for client in made:
        await client.aclose()


async def key_for(guard: MeterGuard, plan: str) -> tuple[str, str]:
    customer = f"{plan}-{uuid.uuid4().hex[:8]}"
    await guard.directory.create(customer, plan)
    _, key = await guard.directory.issue_key(customer)
    return customer, key


async def usage(client: httpx.AsyncClient, customer: str) -> dict[str, Any]:
    response = await client.get(f"/_meterguard/customers/{customer}/usage", headers=ADMIN)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


@pytest.mark.parametrize("mode", ["exact", "fast"])
async def test_records_counted_and_uncounted_shown(
    gateway: Callable[..., Awaitable[Client]], caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    client, guard = await gateway(mode)
    customer, key = await key_for(guard, "free")
    auth = {"x-api-key": key}
    bodies = {
        "[1, 2, 3, 4]": 4,  # FastAPI's `return [...]`
        '{"data": [1, 2, 3], "meta": {"n": 3}}': 3,
        '{"data": [1, 2': None,  # labelled JSON, not JSON
        "[" + ", ".join(["1"] * 300) + "]": 300,  # over records.max_body_bytes (400): counted as it passes
        "[" + ", ".join(["[1, 2"] * 300) + "]": None,  # the same size, and its structure never closes
    }
    for body, count in bodies.items():
        response = await client.get("/v1/raw", params={"body": body}, headers=auth)
        assert response.status_code == 200 and response.text == body, count
    # Over the limit by its Content-Length already: never buffered, counted as it streams.
    await client.get("/v1/posts/search?n=40", headers=auth)
    await guard.engine.aclose()  # fast mode: flush what the process holds
    document = await usage(client, customer)
    assert document["calls"]["used"] == 6
    assert document["records"]["used"] == 347
    assert document["uncounted"] == 2
    assert document["by_route"]["GET /v1/raw"] == {"calls": 5, "records": 307}
    assert guard.metrics.uncounted == {"free": 2}
    lines = [r.getMessage() for r in caplog.records if "records not counted" in r.getMessage()]
    assert len(lines) == 2
    assert all(f"customer {customer} on route GET /v1/raw" in line for line in lines)
    metrics = (await client.get("/_meterguard/metrics", headers=ADMIN)).text
    assert 'meterguard_uncounted_responses_total{plan="free"} 2.0' in metrics


async def test_exact_mode_a_client_that_has_read_a_response_finds_its_records_in_the_usage(
    private_redis: RedisServer, fault_proxy: Callable[[int], FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT 6: records are settled before the response's last body chunk is passed on. The
    gateway reaches Redis through a proxy that holds every command 50 ms; the usage is read
    straight from Redis the moment each response has been read, and already has its records."""
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    proxy = fault_proxy(private_redis.port)
    gateway_store = RedisStore(proxy.url, key_prefix="read-after")
    reader = RedisStore(private_redis.url, key_prefix="read-after")
    guard = MeterGuard(data_app, config=parse_config(PLANS.format(mode="exact")), store=gateway_store)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test") as client:
            customer, key = await key_for(guard, "free")
            proxy.delay(0.05, both=True)
            expected = 0
            for n in (3, 7, 1, 12, 5):
                response = await client.get(f"/v1/posts/search?n={n}", headers={"x-api-key": key})
                assert len(response.json()["data"]) == n
                expected += n
                period = period_for(time.time()).id  # key_for's customers start their period on day 1
                assert (await reader.usage(customer, period)).records == expected
    finally:
        proxy.heal()
        await guard.aclose()
        await reader.aclose()


@pytest.mark.parametrize("mode", ["exact", "fast"])
async def test_statuses_the_plan_does_not_bill_are_refunded(
    gateway: Callable[..., Awaitable[Client]], mode: str
) -> None:
    client, guard = await gateway(mode)
    free, free_key = await key_for(guard, "free")
    strict, strict_key = await key_for(guard, "strict")
    for key in (free_key, strict_key):
        auth = {"x-api-key": key}
        with pytest.raises(RuntimeError):  # the app raises: the client gets a 500
            await client.get("/v1/boom", headers=auth)
        assert (await client.get("/v1/raw", params={"status": "503", "records": "5"}, headers=auth)).status_code == 503
        assert (await client.get("/v1/raw", params={"status": "404", "records": "2"}, headers=auth)).status_code == 404
        assert (await client.get("/v1/raw", params={"status": "201", "body": "[1]"}, headers=auth)).status_code == 201
        assert (await client.get("/v1/raw", params={"status": "204", "body": ""}, headers=auth)).status_code == 204
    await guard.engine.aclose()  # fast mode: flush what the process holds
    # default: 2xx, 3xx and 4xx billed, 5xx not
    assert ((document := await usage(client, free))["calls"]["used"], document["records"]["used"]) == (3, 3)
    assert (document["uncounted"], document["by_route"]["GET /v1/raw"]) == (0, {"calls": 3, "records": 3})
    # billable_status: ["2xx"]: the 404 and its records are given back too
    assert ((document := await usage(client, strict))["calls"]["used"], document["records"]["used"]) == (2, 1)


async def test_remaining_is_none_on_a_meter_that_bills_until_the_spend_cap(
    gateway: Callable[..., Awaitable[Client]],
) -> None:
    client, guard = await gateway()
    _, paid = await key_for(guard, "paid")
    _, mixed = await key_for(guard, "mixed")
    _, free = await key_for(guard, "free")

    async def remaining(key: str, n: int = 0) -> tuple[Any, Any]:
        SEEN.clear()
        response = await client.get(f"/v1/posts/search?n={n}", headers={"x-api-key": key})
        assert response.status_code == 200, response.text
        return SEEN[-1]["calls_remaining"], SEEN[-1]["records_remaining"]

    assert await remaining(free, 10) == (99, 1000)  # before this response's records
    assert await remaining(free) == (98, 990)
    # both meters billed: nothing to cap, within the quota or past it, until the spend cap ...
    assert await remaining(paid, 12) == (None, None)
    assert await remaining(paid) == (None, None)  # 2 records over: $0.20
    for _ in range(8):
        assert await remaining(paid) == (None, None)  # calls 3..10: up to 7 over, $0.70 + $0.20
    # ... is reached by call 11 ($0.80 + $0.20 = $1.00): the next request gets 402
    assert await remaining(paid) == (0, 0)
    assert (await client.get("/v1/posts/search?n=0", headers={"x-api-key": paid})).status_code == 402
    # records billed, calls blocking: the calls quota still tells what is left
    assert await remaining(mixed, 30) == (4, None)
    assert await remaining(mixed) == (3, None)


# -- 2 uvicorn workers on Redis -------------------------------------------------------------------


async def test_counting_and_refunds_through_two_workers(tmp_path: Path, key_prefix: str) -> None:
    url = f"{REDIS_URL}?prefix={key_prefix}"
    plans = PLANS.format(mode="exact")
    config = tmp_path / "plans.yaml"
    config.write_text(plans)
    store = store_from_url(url)
    directory = Directory(parse_config(plans), store)
    customer = f"workers-{uuid.uuid4().hex[:8]}"
    await directory.create(customer, "free")
    _, key = await directory.issue_key(customer)
    try:
        with Gateway("tests.support:data_app", config, url, workers=2, env={"MG_ADMIN_TOKEN": TOKEN}) as served:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
                auth = {"x-api-key": key}
                base = f"http://127.0.0.1:{served.port}"
                for _ in range(10):  # a connection each, which the workers take in turns as they accept
                    async with httpx.AsyncClient(base_url=base, headers=auth) as fresh:
                        assert (await fresh.get("/v1/raw", params={"body": "[1, 2, 3]"})).status_code == 200
                        assert (await fresh.get("/v1/raw", params={"body": "[1, 2"})).status_code == 200
                        assert (await fresh.get("/v1/boom")).status_code == 500
                assert (await client.get("/v1/posts/search?n=40", headers=auth)).status_code == 200  # streamed
                document = (await client.get(f"/_meterguard/customers/{customer}/usage", headers=ADMIN)).json()
        assert document["calls"]["used"] == 21  # the 10 500s were given back
        assert document["records"]["used"] == 70
        assert document["uncounted"] == 10
    finally:
        await store.aclose()
        await drop_keys(REDIS_URL, key_prefix)
