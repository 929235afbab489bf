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
