"""The HTTP behaviour of a wrapped app (CONTRACT section 6), in-process through httpx.ASGITransport."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from meterguard import MeterGuard, parse_config
from meterguard.errors import StoreUnavailable
from meterguard.keys import generate_key
from meterguard.store.base import AdmitRequest, Decision
from meterguard.store.memory import MemoryStore
from meterguard.store.redis import RedisStore

from .conftest import REDIS_URL, drop_keys
from .support import SEEN, Clock, data_app, sf_dict, sf_list, utc

PLANS = """
version: 1
routes:
  - {match: "GET /health", public: true}
  - {match: "GET /v1/posts/search", weight: 1}
  - {match: "GET /v1/posts/archive", weight: 5, plans: [pro]}
  - {match: "GET /v1/posts/{post_id}"}
plans:
  free:
    rate_limits: ["3/minute", "100/hour"]
    route_limits:
      "GET /v1/posts/search": ["2/minute"]
    quotas: {calls: 50, records: 25}
    strategy: fixed
  pro:
    price: "5000.00"
    rate_limits: ["1000/minute"]
    quotas: {calls: 10, records: 100}
    overage:
      calls: {unit: 1, price: "1.00"}
      records: {unit: 10, price: "0.50"}
      spend_cap: "3.00"
  unlimited:
    price: "1.00"
"""

QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
PROBLEMS = "https://meterguard.dev/problems/"

Factory = Callable[..., Awaitable[tuple[httpx.AsyncClient, MeterGuard]]]


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2026, 11, 10, 12, 0, 0))


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    async def factory(
        plans: str = PLANS, *, clock: Clock | None = None, store: Any = None, app: Any = data_app
    ) -> tuple[httpx.AsyncClient, MeterGuard]:
        guard = MeterGuard(
            app, config=parse_config(plans), store=store or MemoryStore(clock=clock or Clock(0)), clock=clock
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test")
        clients.append(client)
        return client, guard

    yield factory
    for client in clients:
        await client.aclose()


async def customer(guard: MeterGuard, name: str = "acme", plan: str = "free", anchor_day: int | None = None) -> str:
    await guard.directory.create(name, plan, anchor_day)
    _, key = await guard.directory.issue_key(name)
    return key


def problem(response: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    assert body["type"] == type_
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


# -- authentication -------------------------------------------------------------------------------


async def test_public_route_needs_no_key_and_is_not_metered(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    response = await client.get("/health")
    assert response.status_code == 200
    assert "ratelimit" not in response.headers


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"x-api-key": "not-a-key"}, id="garbage"),
        pytest.param({"authorization": "Basic dXNlcjpwYXNz"}, id="basic-auth"),
        pytest.param({"authorization": "Bearer"}, id="empty-bearer"),
        pytest.param({"x-api-key": "mg_live_" + "A" * 38}, id="bad-checksum"),
        pytest.param({"x-api-key": generate_key()}, id="unknown"),
        pytest.param({"authorization": f"Bearer {generate_key()}"}, id="unknown-bearer"),
    ],
)
async def test_missing_malformed_or_unknown_credentials_get_401(
    make: Factory, clock: Clock, headers: dict[str, str]
) -> None:
    client, _ = await make(clock=clock)
    SEEN.clear()
    response = await client.get("/v1/posts/search", headers=headers)
    problem(response, 401, PROBLEMS + "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert SEEN == []  # a refused request reaches no app code


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe\xfd", b"mg_live_\xc3\xa9" + b"A" * 36, b"\x00\x01", b" " * 3, b"mg_live_" + b"\xff" * 38],
    ids=["latin1-high", "utf8-in-key", "control", "blank", "key-length-high-bytes"],
)
async def test_non_utf8_and_malformed_header_bytes_are_401_never_500(make: Factory, raw: bytes) -> None:
    client, _ = await make()
    response = await client.get("/v1/posts/search", headers=[(b"x-api-key", raw)])
    problem(response, 401, PROBLEMS + "unauthenticated")


async def test_malformed_key_is_refused_without_a_store_lookup(make: Factory) -> None:
    class CountingStore(MemoryStore):
        lookups = 0

        async def find_key(self, key_hash: str) -> Any:
            CountingStore.lookups += 1
            return await super().find_key(key_hash)

    client, guard = await make(store=CountingStore())
    key = await customer(guard)
    tampered = key[:-7] + ("B" if key[-7] != "B" else "C") + key[-6:]
    response = await client.get("/v1/posts/search", headers={"x-api-key": tampered})
    problem(response, 401, PROBLEMS + "unauthenticated")
    assert CountingStore.lookups == 0
    assert (await client.get("/v1/posts/search", headers={"x-api-key": key})).status_code == 200
    assert CountingStore.lookups == 1


async def test_bearer_and_configured_header_both_work(make: Factory) -> None:
    client, guard = await make(PLANS.replace("version: 1", "version: 1\nauth: {api_key_header: X-Customer-Key}"))
    key = await customer(guard)
    assert (await client.get("/v1/posts/search", headers={"x-customer-key": key})).status_code == 200
    assert (await client.get("/v1/posts/search", headers={"authorization": f"Bearer {key}"})).status_code == 200
    response = await client.get("/v1/posts/search", headers={"x-api-key": key})
    problem(response, 401, PROBLEMS + "unauthenticated")


async def test_revoked_key_is_refused(make: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    client, guard = await make()
    await guard.directory.create("acme", "free")
    record, key = await guard.directory.issue_key("acme")
    assert (await client.get("/v1/posts/search", headers={"x-api-key": key})).status_code == 200
    await guard.directory.revoke_key(record.key_id)
    guard.authenticator.invalidate()
    problem(await client.get("/v1/posts/search", headers={"x-api-key": key}), 401, PROBLEMS + "unauthenticated")


async def test_suspended_customer_gets_403(make: Factory) -> None:
    client, guard = await make()
    key = await customer(guard)
    await guard.directory.update("acme", status="suspended")
    guard.authenticator.invalidate()
    SEEN.clear()
    problem(await client.get("/v1/posts/search", headers={"x-api-key": key}), 403, PROBLEMS + "customer-suspended")
    assert SEEN == []


async def test_route_not_in_plan_gets_403_and_uses_no_quota(make: Factory) -> None:
    client, guard = await make()
    key = await customer(guard)
    problem(await client.get("/v1/posts/archive", headers={"x-api-key": key}), 403, PROBLEMS + "route-not-in-plan")
    usage = await guard.store.usage("acme", guard.engine.period(1, guard.clock()).id)
    assert usage.calls == 0


async def test_cors_preflight_passes_unchecked_and_uncounted(make: Factory) -> None:
    client, _ = await make()
    SEEN.clear()
    response = await client.options(
        "/v1/other/x", headers={"origin": "https://app.test", "access-control-request-method": "GET"}
    )
    assert response.status_code == 200
    assert "ratelimit" not in response.headers
    # An OPTIONS that is not a preflight is an ordinary request and needs a key.
    problem(await client.options("/v1/other/x"), 401, PROBLEMS + "unauthenticated")


# -- rate windows ----------------------------------------------------------------------------------


async def test_rate_window_refusal_has_window_scope_headers_and_retry_after(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard)
    headers = {"x-api-key": key}
    for expected_remaining in (2, 1, 0):
        response = await client.get("/v1/posts/1?n=0", headers=headers)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-remaining"] == str(expected_remaining)
    SEEN.clear()
    response = await client.get("/v1/posts/1?n=0", headers=headers)
    body = problem(response, 429, QUOTA_EXCEEDED)
    assert SEEN == []
    assert body["scope"] == "window"
    assert body["violated-policies"] == ["1m"]
    assert body["plan"] == "free"
    assert response.headers["retry-after"] == "60"  # fixed window, clock at :00 of the minute
    assert response.headers["x-ratelimit-limit"] == "3"
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert response.headers["x-ratelimit-reset"] == str(int(clock.now) + 60)
    clock.advance(59.5)
    assert (await client.get("/v1/posts/1?n=0", headers=headers)).headers["retry-after"] == "1"
    clock.advance(0.5)
    assert (await client.get("/v1/posts/1?n=0", headers=headers)).status_code == 200
    usage = await guard.store.usage("acme", "2026-11")
    assert usage.calls == 4
    assert usage.rejected["rate_limited"] == 2


async def test_route_window_is_named_with_route_prefix(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard)
    for _ in range(2):
        assert (await client.get("/v1/posts/search", headers={"x-api-key": key})).status_code == 200
    response = await client.get("/v1/posts/search", headers={"x-api-key": key})
    body = problem(response, 429, QUOTA_EXCEEDED)
    assert body["violated-policies"] == ["route-1m"]
    # The plan's own window still has room for other routes.
    assert (await client.get("/v1/posts/7", headers={"x-api-key": key})).status_code == 200


async def test_sliding_window_retry_after_counts_the_previous_slot(make: Factory, clock: Clock) -> None:
    client, guard = await make(PLANS.replace("    strategy: fixed\n", ""), clock=clock)
    key = await customer(guard)
    for _ in range(3):
        assert (await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200
    clock.advance(60)  # next slot: the previous three still weigh 3 * (60 - 0) / 60 = 3
    response = await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})
    problem(response, 429, QUOTA_EXCEEDED)
    assert response.headers["retry-after"] == "20"  # 3 * (60 - e) / 60 + 1 <= 3  <=>  e >= 20
    clock.advance(20)
    assert (await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200


# -- headers ---------------------------------------------------------------------------------------


async def test_ratelimit_headers_parse_as_structured_fields(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard)
    response = await client.get("/v1/posts/search?n=4", headers={"x-api-key": key})
    assert response.status_code == 200
    policy = sf_list(response.headers["ratelimit-policy"])
    assert policy == {
        "1m": {"q": 3, "w": 60},
        "1h": {"q": 100, "w": 3600},
        "route-1m": {"q": 2, "w": 60},
        "calls-period": {"q": 50},
        "records-period": {"q": 25},
    }
    state = sf_list(response.headers["ratelimit"])
    to_period_end = int(utc(2026, 12, 1).timestamp() - clock.now)
    assert state == {
        "1m": {"r": 2, "t": 60},
        "1h": {"r": 99, "t": 3600},
        "route-1m": {"r": 1, "t": 60},
        "calls-period": {"r": 49, "t": to_period_end},
        "records-period": {"r": 25, "t": to_period_end},
    }
    # The tightest window (fewest remaining) drives X-RateLimit-*.
    assert response.headers["x-ratelimit-limit"] == "2"
    assert response.headers["x-ratelimit-remaining"] == "1"
    usage = sf_dict(response.headers["x-meterguard-usage"])
    assert usage == {"calls": (1, {"limit": 50}), "records": (0, {"limit": 25})}
    second = await client.get("/v1/posts/search?n=4", headers={"x-api-key": key})
    assert sf_dict(second.headers["x-meterguard-usage"])["records"] == (4, {"limit": 25})


async def test_tie_between_windows_goes_to_the_shorter(make: Factory, clock: Clock) -> None:
    plans = PLANS.replace('rate_limits: ["3/minute", "100/hour"]', 'rate_limits: ["5/hour", "5/minute"]')
    client, guard = await make(plans, clock=clock)
    key = await customer(guard)
    response = await client.get("/v1/posts/1", headers={"x-api-key": key})
    assert response.headers["x-ratelimit-remaining"] == "4"
    assert response.headers["x-ratelimit-reset"] == str(int(clock.now) + 60)


async def test_plan_without_quotas_or_windows_omits_them(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard, plan="unlimited")
    response = await client.get("/v1/posts/1", headers={"x-api-key": key})
    assert response.status_code == 200
    assert "x-ratelimit-limit" not in response.headers
    assert "ratelimit-policy" not in response.headers
    assert sf_dict(response.headers["x-meterguard-usage"]) == {"calls": (1, {}), "records": (0, {})}
    assert SEEN[-1]["calls_remaining"] is None and SEEN[-1]["records_remaining"] is None


# -- quotas, weights, records ----------------------------------------------------------------------


async def test_calls_quota_refusal_has_period_scope(make: Factory, clock: Clock) -> None:
    plans = PLANS.replace("quotas: {calls: 50, records: 25}", "quotas: {calls: 2, records: 25}")
    client, guard = await make(plans, clock=clock)
    key = await customer(guard)
    for _ in range(2):
        assert (await client.get("/v1/posts/1", headers={"x-api-key": key})).status_code == 200
    response = await client.get("/v1/posts/1", headers={"x-api-key": key})
    body = problem(response, 429, QUOTA_EXCEEDED)
    assert body["scope"] == "period"
    assert body["violated-policies"] == ["calls-period"]
    assert (body["limit"], body["used"]) == (2, 2)
    assert body["resets_at"] == "2026-12-01T00:00:00Z"
    assert response.headers["retry-after"] == str(int(utc(2026, 12, 1).timestamp() - clock.now))
    assert sf_list(response.headers["ratelimit"])["calls-period"]["r"] == 0


async def test_weight_needs_that_many_units_and_is_refused_whole(make: Factory, clock: Clock) -> None:
    plans = PLANS.replace('rate_limits: ["1000/minute"]', 'rate_limits: ["12/minute"]')
    client, guard = await make(plans, clock=clock)
    key = await customer(guard, plan="pro")
    for _ in range(2):
        assert (await client.get("/v1/posts/archive", headers={"x-api-key": key})).status_code == 200
    response = await client.get("/v1/posts/archive", headers={"x-api-key": key})  # needs 5, 2 left
    problem(response, 429, QUOTA_EXCEEDED)
    assert (await client.get("/v1/posts/1", headers={"x-api-key": key})).status_code == 200  # weight 1 fits
    usage = await guard.store.usage("acme", "2026-11")
    assert usage.calls == 11
    assert usage.by_route["GET /v1/posts/archive"].calls == 10


async def test_records_counted_from_json_field_and_quota_blocks_next_request(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard)
    first = await client.get("/v1/posts/search?n=20", headers={"x-api-key": key})
    assert len(first.json()["data"]) == 20
    assert SEEN[-1]["records_remaining"] == 25
    second = await client.get("/v1/posts/7?n=9", headers={"x-api-key": key})  # more than the 5 left: delivered
    assert len(second.json()["data"]) == 9
    assert SEEN[-1]["records_remaining"] == 5
    response = await client.get("/v1/posts/7", headers={"x-api-key": key})
    body = problem(response, 429, QUOTA_EXCEEDED)
    assert body["violated-policies"] == ["records-period"]
    assert (body["limit"], body["used"]) == (25, 29)
    usage = await guard.store.usage("acme", "2026-11")
    assert (usage.calls, usage.records) == (2, 29)
    assert usage.by_route["GET /v1/posts/search"].records == 20
    assert usage.by_route["GET /v1/posts/{post_id}"].records == 9


async def test_records_header_is_counted_and_removed(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard)
    response = await client.get("/v1/header?n=7", headers={"x-api-key": key})
    assert response.status_code == 200
    assert response.text == "rows\n"
    assert "x-meterguard-records" not in response.headers
    assert (await guard.store.usage("acme", "2026-11")).records == 7


@pytest.mark.parametrize("bad", ["-3", "NaN", "true", "1e3", "12abc", "99999999999999", " "])
async def test_invalid_records_header_counts_nothing_and_never_fails(make: Factory, bad: str) -> None:
    client, guard = await make()
    key = await customer(guard)
    response = await client.get("/v1/header", params={"n": bad}, headers={"x-api-key": key})
    assert response.status_code == 200
    assert "x-meterguard-records" not in response.headers
    usage = await guard.store.usage("acme", guard.engine.period(1, guard.clock()).id)
    assert (usage.calls, usage.records) == (1, 0)


@pytest.mark.parametrize(
    ("body", "content_type", "records", "uncounted"),
    [
        ('{"data": [1, 2, 3]}', "application/json", 3, 0),
        ('{"data": [1, 2, 3]}', "application/vnd.api+json; charset=utf-8", 3, 0),
        ('{"data": {"a": 1}}', "application/json", 0, 0),
        ("[1, 2, 3]", "application/json", 3, 0),  # FastAPI's `return [...]` (CONTRACT 11)
        ('[{"data": [1, 2]}, {"a": [3]}]', "application/json", 2, 0),
        ('"just a string"', "application/json", 0, 0),
        ('{"data": [1, 2', "application/json", 0, 1),
        ('{"data": [1, 2]} trailing', "application/json", 0, 1),
        ('{"data": [1, 2, 3]}', "text/plain", 0, 0),
        ("\xff\xfe binary", "application/octet-stream", 0, 0),
        ("[" * 20000, "application/json", 0, 1),
    ],
    ids=[
        "array", "vendor-json", "object", "top-level-array", "array-of-objects", "string", "truncated", "trailing",
        "not-json-type", "binary", "deep",
    ],
)  # fmt: skip
async def test_bodies_pass_byte_identical(
    make: Factory, body: str, content_type: str, records: int, uncounted: int
) -> None:
    client, guard = await make()
    key = await customer(guard)
    response = await client.get("/v1/raw", params={"body": body, "type": content_type}, headers={"x-api-key": key})
    assert response.status_code == 200
    assert response.content == body.encode()
    usage = await guard.store.usage("acme", guard.engine.period(1, guard.clock()).id)
    assert (usage.calls, usage.records, usage.uncounted) == (1, records, uncounted)
    assert guard.metrics.uncounted.get("free", 0) == uncounted


async def test_json_body_over_the_size_bound_is_counted_as_it_passes(make: Factory) -> None:
    plans = PLANS.replace("version: 1", "version: 1\nrecords: {max_body_bytes: 100}")
    client, guard = await make(plans)
    key = await customer(guard)
    response = await client.get("/v1/posts/search?n=20", headers={"x-api-key": key})
    assert len(response.json()["data"]) == 20
    usage = await guard.store.usage("acme", guard.engine.period(1, guard.clock()).id)
    assert (usage.records, usage.uncounted) == (20, 0)


async def test_a_large_body_is_never_held_back(make: Factory) -> None:
    """Past records.max_body_bytes each chunk leaves as it comes, and the count is still exact."""
    sent: list[bytes] = []
    chunks = [b'{"meta": {"note": "[not, counted]"}, "data": [', *[b'{"id": %d, "t": "a,b]"},' % i for i in range(999)]]
    chunks.append(b'{"id": 999}]}')

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        for index, chunk in enumerate(chunks):
            await send({"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1})
            if sum(map(len, chunks[: index + 1])) > 100:  # once past the limit, nothing is held
                assert sent[-1].endswith(chunk)  # passed on before the app made the next one

    plans = PLANS.replace("version: 1", "version: 1\nrecords: {max_body_bytes: 100}")
    guard = MeterGuard(app, config=parse_config(plans), store=MemoryStore())
    key = await customer(guard)

    async def downstream(message: Any) -> None:
        if message["type"] == "http.response.body":
            sent.append(message["body"])

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/v1/big", "headers": [(b"x-api-key", key.encode())],
             "query_string": b"", "client": ("127.0.0.1", 1)}  # fmt: skip
    await guard(scope, receive, downstream)
    assert b"".join(sent) == b"".join(chunks)
    usage = await guard.store.usage("acme", guard.engine.period(1, guard.clock()).id)
    assert (usage.records, usage.uncounted) == (1000, 0)


async def test_streaming_body_is_untouched(make: Factory) -> None:
    client, guard = await make()
    key = await customer(guard)
    async with client.stream("GET", "/v1/stream", headers={"x-api-key": key}) as response:
        chunks = [chunk async for chunk in response.aiter_bytes()]
    assert b"".join(chunks) == b"".join(f"chunk {i}\n".encode() for i in range(5))
    assert "ratelimit-policy" in response.headers


async def test_scope_tells_the_app_what_is_left(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard)
    await client.get("/v1/posts/search?n=3", headers={"x-api-key": key})
    seen = SEEN[-1]
    assert seen["customer"] == "acme" and seen["plan"] == "free" and seen["key_id"].startswith("key_")
    assert (seen["calls_remaining"], seen["records_remaining"]) == (49, 25)


async def test_app_exception_is_a_500_and_not_billed_by_default(make: Factory) -> None:
    client, guard = await make()
    key = await customer(guard)
    with pytest.raises(RuntimeError):
        await client.get("/v1/boom", headers={"x-api-key": key})
    assert (await guard.store.usage("acme", guard.engine.period(1, guard.clock()).id)).calls == 0


async def test_app_exception_is_billed_where_the_plan_bills_500(make: Factory) -> None:
    client, guard = await make(PLANS.replace("strategy: fixed", 'strategy: fixed\n    billable_status: ["2xx", 500]'))
    key = await customer(guard)
    with pytest.raises(RuntimeError):
        await client.get("/v1/boom", headers={"x-api-key": key})
    assert (await guard.store.usage("acme", guard.engine.period(1, guard.clock()).id)).calls == 1


async def test_unmatched_routes_are_keyed_by_method_and_path(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard, plan="unlimited")
    await client.get("/v1/other/a", headers={"x-api-key": key})
    await client.post("/v1/other/a", headers={"x-api-key": key})
    usage = await guard.store.usage("acme", "2026-11")
    assert usage.by_route["GET /v1/other/a"].calls == 1
    assert usage.by_route["POST /v1/other/a"].calls == 1


# -- billing plans ---------------------------------------------------------------------------------


async def test_overage_is_served_then_spend_cap_gives_402(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard, plan="pro")
    for _ in range(10):  # the included calls
        assert (await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200
    for _ in range(3):  # $1.00 each past the quota; the cap of $3.00 is reached by the third
        assert (await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200
    SEEN.clear()
    response = await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})
    body = problem(response, 402, PROBLEMS + "spend-cap-reached")
    assert SEEN == []
    assert body["plan"] == "pro"
    usage = await guard.store.usage("acme", "2026-11")
    assert usage.calls == 13
    assert usage.rejected["spend_cap"] == 1


# -- periods ---------------------------------------------------------------------------------------


async def test_calendar_period_rolls_over_at_midnight_utc_on_the_first(make: Factory) -> None:
    clock = Clock(utc(2026, 11, 30, 23, 59, 58))
    plans = PLANS.replace("quotas: {calls: 50, records: 25}", "quotas: {calls: 1, records: 25}")
    client, guard = await make(plans, clock=clock)
    key = await customer(guard)
    assert (await client.get("/v1/posts/1", headers={"x-api-key": key})).status_code == 200
    problem(await client.get("/v1/posts/1", headers={"x-api-key": key}), 429, QUOTA_EXCEEDED)
    clock.set(utc(2026, 12, 1, 0, 0, 0))
    assert (await client.get("/v1/posts/1", headers={"x-api-key": key})).status_code == 200
    assert (await guard.store.usage("acme", "2026-11")).calls == 1
    assert (await guard.store.usage("acme", "2026-12")).calls == 1


async def test_anniversary_anchor_starts_periods_on_the_customers_day(make: Factory) -> None:
    clock = Clock(utc(2026, 11, 14, 23, 0, 0))
    plans = PLANS.replace("version: 1", "version: 1\nbilling: {anchor: anniversary}").replace(
        "quotas: {calls: 50, records: 25}", "quotas: {calls: 1, records: 25}"
    )
    client, guard = await make(plans, clock=clock)
    key = await customer(guard, anchor_day=15)
    response = await client.get("/v1/posts/1", headers={"x-api-key": key})
    assert response.status_code == 200
    refused = await client.get("/v1/posts/1", headers={"x-api-key": key})
    assert problem(refused, 429, QUOTA_EXCEEDED)["resets_at"] == "2026-11-15T00:00:00Z"
    assert refused.headers["retry-after"] == "3600"
    clock.set(utc(2026, 11, 15, 0, 0, 0))
    assert (await client.get("/v1/posts/1", headers={"x-api-key": key})).status_code == 200
    assert (await guard.store.usage("acme", "2026-10")).calls == 1  # the period that started Oct 15
    assert (await guard.store.usage("acme", "2026-11")).calls == 1


# -- store failures and other scopes --------------------------------------------------------------


class DownStore(MemoryStore):
    async def admit(self, request: AdmitRequest) -> Decision:
        raise StoreUnavailable("connection refused")


async def test_store_outage_fail_closed_gives_503(make: Factory) -> None:
    client, guard = await make(store=DownStore())
    key = await customer(guard)
    SEEN.clear()
    response = await client.get("/v1/posts/1", headers={"x-api-key": key})
    problem(response, 503, PROBLEMS + "store-unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert SEEN == []


async def test_store_outage_fail_open_serves(make: Factory) -> None:
    client, guard = await make(PLANS.replace("version: 1", "version: 1\non_store_error: fail_open"), store=DownStore())
    key = await customer(guard)
    assert (await client.get("/v1/posts/1", headers={"x-api-key": key})).status_code == 200


async def _lifespan(guard: MeterGuard) -> list[str]:
    """A server's lifespan run against ``guard``: startup, then shutdown; what it was told."""
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    told: list[str] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        told.append(message["type"])

    await guard({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)  # type: ignore[arg-type]
    return told


async def test_lifespan_and_websocket_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "lifespan":  # an app that speaks lifespan
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    guard = MeterGuard(app, config=parse_config(PLANS))
    assert await _lifespan(guard) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    await guard({"type": "websocket", "path": "/v1/posts/1", "headers": []}, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"]


@pytest.mark.parametrize("refusal", ["raises", "returns"])
async def test_the_lifespan_is_answered_for_an_app_that_does_not_speak_it(refusal: str) -> None:
    """Django's ASGI handler raises on a lifespan scope, many hand-written apps return: the server
    then runs without one, and MeterGuard never heard the shutdown that flushes what it holds.
    Answered by MeterGuard itself, under any server (it was answered only by `meterguard serve`)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" and refusal == "raises":
            raise RuntimeError("no lifespan here")

    store = MemoryStore()
    closed: list[bool] = []

    async def aclose() -> None:
        closed.append(True)

    store.aclose = aclose  # type: ignore[method-assign]
    guard = MeterGuard(app, config=parse_config(PLANS), store=store)
    assert await _lifespan(guard) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert closed == [True]  # the shutdown reached the gateway, which closed its store


async def test_a_lifespan_the_app_speaks_and_fails_is_the_servers_to_report() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        raise RuntimeError("startup failed")

    guard = MeterGuard(app, config=parse_config(PLANS))
    with pytest.raises(RuntimeError, match="startup failed"):
        await _lifespan(guard)


async def test_starlette_middleware_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware

    from .support import data_app as inner

    app = Starlette(routes=inner.routes, middleware=[Middleware(MeterGuard, config=parse_config(PLANS))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/v1/posts/1")
        assert response.status_code == 401
        assert json.loads(response.text)["type"] == PROBLEMS + "unauthenticated"


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_request_just_after_midnight_counts_in_the_new_day(
    make: Factory, clock: Clock, backend: str, key_prefix: str
) -> None:
    # MeterEngine keeps a (customer, key, route) request and ticket until its period or its day
    # ends: the ticket must not carry yesterday's day into today's audit counters.
    clock.set(utc(2026, 11, 10, 23, 59, 59))
    store = MemoryStore(clock=clock) if backend == "memory" else RedisStore(REDIS_URL, key_prefix=key_prefix)
    try:
        client, guard = await make(clock=clock, store=store)
        key = await customer(guard)
        for _ in range(2):
            assert (await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200
            clock.advance(2)  # the second at 00:00:01, the same month
        days = await guard.store.daily("acme", ["2026-11-10", "2026-11-11"])
        assert [day.calls for day in days] == [1, 1]
    finally:
        await store.aclose()
        if backend == "redis":
            await drop_keys(REDIS_URL, key_prefix)


async def test_route_windows_of_the_same_length_count_apart(make: Factory, clock: Clock) -> None:
    plans = PLANS.replace(
        '"GET /v1/posts/search": ["2/minute"]',
        '"GET /v1/posts/search": ["1/minute"]\n      "GET /v1/posts/{post_id}": ["1/minute"]',
    )
    client, guard = await make(plans, clock=clock)
    key = await customer(guard)
    assert (await client.get("/v1/posts/search?n=0", headers={"x-api-key": key})).status_code == 200
    assert (await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200
    refused = await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})
    assert problem(refused, 429, QUOTA_EXCEEDED)["violated-policies"] == ["route-1m"]


# -- idempotency -----------------------------------------------------------------------------------


async def test_idempotent_retry_is_served_again_but_not_billed(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard)
    headers = {"x-api-key": key, "idempotency-key": "order-42"}
    first = await client.get("/v1/posts/search?n=4", headers=headers)
    assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    retry = await client.get("/v1/posts/search?n=4", headers=headers)
    assert retry.status_code == 200
    assert retry.headers["idempotent-replayed"] == "true"
    assert len(retry.json()["data"]) == 4
    usage = await guard.store.usage("acme", "2026-11")
    assert (usage.calls, usage.records, usage.replays) == (1, 4, 1)
    guard_period = guard.engine.period(1, guard.clock())
    from meterguard.usage import usage_document

    document = usage_document(guard.config, "acme", "free", guard_period, usage)
    assert document["replays"] == 1 and document["calls"]["used"] == 1


@pytest.mark.parametrize("value", [b"", b"a" * 256, b"with space", b"\xff\xfe", b"tab\there"])
async def test_malformed_idempotency_key_is_400(make: Factory, value: bytes) -> None:
    client, guard = await make()
    key = await customer(guard)
    response = await client.get("/v1/posts/1", headers=[(b"x-api-key", key.encode()), (b"idempotency-key", value)])
    problem(response, 400, PROBLEMS + "invalid-idempotency-key")
    assert (await guard.store.usage("acme", guard.engine.period(1, guard.clock()).id)).calls == 0


async def test_head_is_metered_and_entitled_as_its_get_route(make: Factory, clock: Clock) -> None:
    client, guard = await make(clock=clock)
    key = await customer(guard)
    problem_response = await client.head("/v1/posts/archive", headers={"x-api-key": key})
    assert problem_response.status_code == 403  # not a way around `plans: [pro]`
    assert (await client.head("/v1/posts/search", headers={"x-api-key": key})).status_code == 200
    usage = await guard.store.usage("acme", "2026-11")
    assert usage.by_route["GET /v1/posts/search"].calls == 1


# -- FastAPI: public docs, and the place of CORSMiddleware ----------------------------------------


def _fastapi_plans(key: str, public_docs: bool) -> str:
    from meterguard.keys import hash_key

    return f"""
version: 1
public_docs: {"true" if public_docs else "false"}
plans:
  free: {{quotas: {{calls: 100}}}}
customers:
  acme: {{plan: free, keys: ["{hash_key(key)}"]}}
"""


@pytest.mark.parametrize("public_docs", [True, False])
async def test_public_docs_serves_fastapi_docs_unmetered(public_docs: bool) -> None:
    from fastapi import FastAPI

    from meterguard.keys import generate_key
    from meterguard.periods import period_for

    key = generate_key()
    store = MemoryStore()
    app = FastAPI()

    @app.get("/v1/orders")
    async def orders() -> list[dict[str, int]]:
        return [{"id": 1}, {"id": 2}, {"id": 3}]

    app.add_middleware(MeterGuard, config=parse_config(_fastapi_plans(key, public_docs)), store=store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        statuses = [(await client.get(path)).status_code for path in ("/docs", "/redoc", "/openapi.json")]
        assert statuses == ([200, 200, 200] if public_docs else [401, 401, 401])
        response = await client.get("/v1/orders", headers={"x-api-key": key})
        assert response.json() == [{"id": 1}, {"id": 2}, {"id": 3}]
    usage = await store.usage("acme", period_for(time.time(), 1).id)
    assert (usage.calls, usage.records) == (1, 3)  # the docs cost nothing; `return [...]` counts


@pytest.mark.parametrize("cors_outside", [True, False], ids=["cors-wraps-meterguard", "meterguard-wraps-cors"])
async def test_cors_middleware_must_wrap_meterguard(cors_outside: bool) -> None:
    """docs/quickstart.md: add MeterGuard first, then CORSMiddleware, so that CORS is the outer one.
    Otherwise a browser cannot read meterguard's own answers (401, 429, 402): they lack
    Access-Control-Allow-Origin. Preflights pass either way."""
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    key = generate_key()
    app = FastAPI()

    @app.get("/v1/orders")
    async def orders() -> list[int]:
        return [1]

    def add_meterguard() -> None:
        app.add_middleware(MeterGuard, config=parse_config(_fastapi_plans(key, False)), store=MemoryStore())

    def add_cors() -> None:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["https://app.example"],
            allow_headers=["x-api-key", "authorization"],
            expose_headers=["RateLimit"],
        )

    # FastAPI and Starlette: the middleware added last is the outermost.
    for add in (add_meterguard, add_cors) if cors_outside else (add_cors, add_meterguard):
        add()
    origin = {"origin": "https://app.example"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        preflight = await client.options(
            "/v1/orders",
            headers={**origin, "access-control-request-method": "GET", "access-control-request-headers": "x-api-key"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        refused = await client.get("/v1/orders", headers=origin)
        assert refused.status_code == 401
        assert ("access-control-allow-origin" in refused.headers) is cors_outside
        served = await client.get("/v1/orders", headers={**origin, "x-api-key": key})
        assert served.headers["access-control-allow-origin"] == "https://app.example"
        assert "ratelimit" in served.headers
