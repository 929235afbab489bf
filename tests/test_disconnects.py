"""A client that goes away loses nothing: records already produced are billed, on every store.

A disconnect cancels the request task (the app is cut short mid-response); the records the
app reported are settled all the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from meterguard import MeterGuard, parse_config
from meterguard.periods import period_for
from meterguard.store.base import Store

PLANS = "version: 1\nplans:\n  free: {quotas: {calls: 100, records: 1000}}\n"


def slow_app(started: asyncio.Event) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        """Reports 7 records up front, then streams slowly: the client leaves before the end."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-meterguard-records", b"7")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        started.set()
        await asyncio.sleep(30)
        await send({"type": "http.response.body", "body": b"last", "more_body": False})

    return app


def scope(key: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/v1/export", "raw_path": b"/v1/export", "query_string": b"",
            "headers": [(b"x-api-key", key.encode())], "root_path": ""}  # fmt: skip


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def usage(guard: MeterGuard) -> tuple[int, int]:
    # In a Redis store the settlement runs in a batch task: give it its round trip.
    for _ in range(50):
        result = await guard.store.usage("acme", period_for(guard.clock()).id)
        if result.records:
            break
        await asyncio.sleep(0.02)
    return result.calls, result.records


async def test_records_of_an_abandoned_response_are_billed(store: Store) -> None:
    started = asyncio.Event()
    guard = MeterGuard(slow_app(started), config=parse_config(PLANS), store=store)
    await guard.directory.create("acme", "free")
    _, key = await guard.directory.issue_key("acme")
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    task = asyncio.ensure_future(guard(scope(key), receive, send))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent[0]["status"] == 200
    assert await usage(guard) == (1, 7)
    await guard.aclose()


@pytest.mark.parametrize(("policy", "status"), [("fail_closed", 503), ("fail_open", 200)])
async def test_an_unreachable_redis_gives_503_or_serves_unmetered(policy: str, status: int) -> None:
    """A real Redis URL with nothing listening (port 1): connection refused, as in an outage."""
    import httpx

    from meterguard.keys import generate_key, hash_key

    key = generate_key()
    plans = PLANS + f"on_store_error: {policy}\ncustomers:\n  acme: {{plan: free, keys: ['{hash_key(key)}']}}\n"
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard = MeterGuard(app, config=parse_config(plans), store="redis://127.0.0.1:1/0?socket_connect_timeout=0.5")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        response = await client.get("/v1/things", headers={"x-api-key": key})
    assert response.status_code == status
    if status == 503:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"] == "https://meterguard.dev/problems/store-unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert seen == []
    else:
        assert seen == ["/v1/things"]
    await guard.aclose()


async def test_admin_health_is_degraded_while_redis_is_unreachable() -> None:
    import httpx

    from meterguard.admin import create_admin_app

    app = create_admin_app(
        parse_config(PLANS), "redis://127.0.0.1:1/0?socket_connect_timeout=0.5", token="t"
    )  # nothing listens on port 1
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/health")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded", "store": "unreachable"}
    await app.store.aclose()  # standalone, the app closes a store it opened at lifespan shutdown
