"""The rate limit headers (responses.py): the same on every store, and coherent on weighted routes.

``test_every_store_sends_the_same_headers`` runs one script of requests (admitted, rate limited,
quota, spend cap, a weighted route) against memory, Redis and the cluster in lockstep and
compares every RateLimit, RateLimit-Policy, X-RateLimit-*, X-Meterguard-* and Retry-After
header. Before the fix the memory store failed it: on a 429 it reported the windows that were
not violated with the refused request's weight taken off ("1d";r=1 where Redis said r=2).
``test_weighted_route_headers_agree`` failed before the weighted-route change: the 429 said
X-RateLimit-Remaining: 2 (units, not requests), and X-RateLimit-Reset pointed at the slot end
while Retry-After pointed at the moment the route's 3 units fit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from meterguard import MeterGuard, parse_config
from meterguard.store.memory import MemoryStore

from .conftest import STORE_KINDS, StoreFactory
from .support import Clock, data_app, sf_dict, sf_list

PLANS = """
version: 1
routes:
  - {match: "GET /health", public: true}
  - {match: "GET /v1/posts/archive", weight: 3}
plans:
  windowed:
    rate_limits: ["4/hour", "6/day"]
    route_limits:
      "GET /v1/posts/archive": ["5/hour"]
    quotas: {calls: 100, records: 50}
  quota:
    rate_limits: ["100/hour"]
    quotas: {calls: 3}
  paid:
    rate_limits: ["100/hour"]
    quotas: {calls: 2}
    overage:
      calls: {unit: 1, price: "1.00"}
      spend_cap: "1.00"
"""

#: (customer, plan, path, expected status); customers are fresh, so every sliding window reads
#: its first slot only and every count is exact.
SCRIPT = [
    ("a", "windowed", "/v1/posts/search?n=2", 200),
    ("a", "windowed", "/v1/posts/archive?n=1", 200),  # weight 3: the 1h window is now full
    ("a", "windowed", "/v1/posts/search", 429),  # 1h violated; 1d (2 left) is not
    ("b", "windowed", "/v1/posts/archive", 200),
    ("b", "windowed", "/v1/posts/archive", 429),  # 1h and route-1h violated; 1d (3 left) is not
    ("b", "windowed", "/v1/posts/search", 200),  # weight 1 still fits the 1h window
    ("c", "quota", "/v1/posts/search", 200),
    ("c", "quota", "/v1/posts/search", 200),
    ("c", "quota", "/v1/posts/search", 200),
    ("c", "quota", "/v1/posts/search", 429),  # the calls quota; the 1h window is not violated
    ("d", "paid", "/v1/posts/search", 200),
    ("d", "paid", "/v1/posts/search", 200),
    ("d", "paid", "/v1/posts/search", 200),  # $1.00 of overage: the cap
    ("d", "paid", "/v1/posts/search", 402),
]

EXACT = ("ratelimit-policy", "x-ratelimit-limit", "x-ratelimit-remaining", "x-meterguard-usage", "x-meterguard-cost")
#: Seconds: each store decides at its own instant (a few ms apart) and rounds up on its own.
TIMED = ("retry-after", "x-ratelimit-reset")


def normalised(response: httpx.Response) -> dict[str, Any]:
    headers = response.headers
    out: dict[str, Any] = {"status": response.status_code}
    for name in (*EXACT, *TIMED):
        out[name] = headers.get(name)
    if "ratelimit" in headers:
        out["ratelimit"] = sf_list(headers["ratelimit"])
    return out


def same(expected: dict[str, Any], got: dict[str, Any], where: str) -> None:
    for name in ("status", *EXACT):
        assert got[name] == expected[name], (where, name, expected[name], got[name])
    for name in TIMED:
        assert (got[name] is None) == (expected[name] is None), (where, name)
        if got[name] is not None:
            assert abs(int(got[name]) - int(expected[name])) <= 1, (where, name, expected[name], got[name])
    assert set(got.get("ratelimit", {})) == set(expected.get("ratelimit", {})), where
    for policy, params in expected.get("ratelimit", {}).items():
        assert got["ratelimit"][policy]["r"] == params["r"], (where, policy, params, got["ratelimit"][policy])
        assert abs(got["ratelimit"][policy]["t"] - params["t"]) <= 1, (where, policy, params, got["ratelimit"][policy])


@pytest.fixture
async def guards(store_factory: StoreFactory) -> AsyncIterator[dict[str, tuple[httpx.AsyncClient, MeterGuard]]]:
    # Away from an hour's edge: the script must not straddle a slot change of its windows.
    if time.time() % 3600 > 3600 - 10:
        await asyncio.sleep(3600 - time.time() % 3600 + 0.1)
    made = {}
    for kind in STORE_KINDS:
        guard = MeterGuard(data_app, config=parse_config(PLANS), store=await store_factory(kind))
        made[kind] = (httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test"), guard)
    yield made
    for client, _ in made.values():
        await client.aclose()


async def test_every_store_sends_the_same_headers(
    guards: dict[str, tuple[httpx.AsyncClient, MeterGuard]], unique_customer: Callable[[str], str]
) -> None:
    names = {letter: unique_customer(letter) for letter in "abcd"}
    keys: dict[tuple[str, str], str] = {}
    for kind, (_, guard) in guards.items():
        for letter, plan in {(step[0], step[1]) for step in SCRIPT}:
            await guard.directory.create(names[letter], plan)
            keys[(kind, letter)] = (await guard.directory.issue_key(names[letter]))[1]
    seen: list[dict[str, dict[str, Any]]] = []
    for step, (letter, _, path, status) in enumerate(SCRIPT):
        replies = await asyncio.gather(
            *(client.get(path, headers={"x-api-key": keys[(kind, letter)]}) for kind, (client, _) in guards.items())
        )
        by_store = {kind: normalised(reply) for kind, reply in zip(guards, replies, strict=True)}
        for kind, got in by_store.items():
            assert got["status"] == status, (step, kind, replies)
            same(by_store["redis"], got, f"step {step} ({letter} {path}) on {kind}")
        seen.append(by_store)
    memory = [step["memory"] for step in seen]
    # The windows a refusal did not violate read as before it (the bug of issue 10).
    assert memory[2]["ratelimit"]["1d"]["r"] == 2 and memory[2]["ratelimit"]["1h"]["r"] == 0
    assert memory[4]["ratelimit"]["1d"]["r"] == 3 and memory[4]["ratelimit"]["route-1h"]["r"] == 2
    assert memory[9]["ratelimit"]["1h"]["r"] == 97
    assert memory[13]["ratelimit"]["1h"]["r"] == 97
    # The weighted route: requests left, not units; it says what it costs.
    assert (memory[1]["x-meterguard-cost"], memory[1]["x-ratelimit-remaining"]) == ("3", "0")
    assert (memory[3]["x-ratelimit-limit"], memory[3]["x-ratelimit-remaining"]) == ("1", "0")
    assert memory[5]["x-meterguard-cost"] is None and memory[5]["x-ratelimit-remaining"] == "0"


@pytest.fixture
async def weighted() -> AsyncIterator[tuple[httpx.AsyncClient, MeterGuard, Clock]]:
    plans = """
version: 1
routes:
  - {match: "GET /v1/posts/archive", weight: 3}
plans:
  free:
    rate_limits: ["100/hour"]
    route_limits:
      "GET /v1/posts/archive": ["5/minute"]
"""
    clock = Clock(datetime(2026, 11, 10, 12, 0, 10, tzinfo=UTC))
    guard = MeterGuard(data_app, config=parse_config(plans), store=MemoryStore(clock=clock), clock=clock)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test") as client:
        yield client, guard, clock


async def test_weighted_route_headers_agree(weighted: tuple[httpx.AsyncClient, MeterGuard, Clock]) -> None:
    """The issue's case: weight 3 under "5/minute". Every header tells the same story in requests
    of this route: none left, and the same moment to come back."""
    client, guard, clock = weighted
    await guard.directory.create("acme", "free")
    _, key = await guard.directory.issue_key("acme")
    auth = {"x-api-key": key}
    first = await client.get("/v1/posts/archive?n=0", headers=auth)
    assert first.status_code == 200
    assert first.headers["x-meterguard-cost"] == "3"
    assert sf_list(first.headers["ratelimit-policy"])["route-1m"] == {"q": 5, "w": 60}
    assert (first.headers["x-ratelimit-limit"], first.headers["x-ratelimit-remaining"]) == ("1", "0")
    # 3 units left of 5 is 2: room for no request of 3 until the slot has moved on far enough
    first_route = sf_list(first.headers["ratelimit"])["route-1m"]
    assert first_route["r"] == 2
    clock.advance(5)
    refused = await client.get("/v1/posts/archive?n=0", headers=auth)
    assert refused.status_code == 429
    body = refused.json()
    assert body["violated-policies"] == ["route-1m"]
    retry = int(refused.headers["retry-after"])
    route = sf_list(refused.headers["ratelimit"])["route-1m"]
    reset = int(refused.headers["x-ratelimit-reset"])
    assert route["r"] == 2
    assert route["t"] == retry == first_route["t"] - 5
    assert reset - math.floor(clock()) in (retry, retry + 1) and reset >= clock() + retry - 1
    assert refused.headers["x-ratelimit-remaining"] == "0"
    # and waiting that long is enough, not a second less
    clock.advance(retry - 1)
    assert (await client.get("/v1/posts/archive?n=0", headers=auth)).status_code == 429
    clock.advance(1)
    assert (await client.get("/v1/posts/archive?n=0", headers=auth)).status_code == 200
    # a weight-1 route of the same customer counts requests one for one
    other = await client.get("/v1/posts/search?n=0", headers=auth)
    assert "x-meterguard-cost" not in other.headers
    assert sf_dict(other.headers["x-meterguard-usage"])["calls"][0] == 7
