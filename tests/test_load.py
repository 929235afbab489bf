"""tests/load.py: the summary's arithmetic, and the driver against a real ``meterguard serve``."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from meterguard.keys import generate_key, hash_key

from .faultproxy import FaultProxy
from .load import BackgroundLoad, LoadResult, Outcome, count_records, drive, summarize
from .wave import Gateway

ADMIN_TOKEN = "load-test-token"


def test_summary_counts_served_calls_and_records_per_customer() -> None:
    outcomes = [
        Outcome("a", 1.0, 0.010, 200, 3),
        Outcome("a", 1.1, 0.020, 200, 2),
        Outcome("a", 1.2, 0.030, 429),
        Outcome("b", 1.3, 0.040, 200, 0),
        Outcome("b", 1.4, 2.000, 503),
        Outcome("b", 1.5, 5.000, error="timeout"),
        Outcome("a", 1.6, 0.500, 200, error="incomplete"),  # cut off after its head: not served
        Outcome("a", 1.7, 0.001, error="refused"),
    ]
    summary = summarize(outcomes)
    assert summary.requests == 8
    assert summary.statuses == Counter({200: 3, 429: 1, 503: 1})
    assert summary.errors == Counter({"timeout": 1, "incomplete": 1, "refused": 1})
    a, b = summary.customers["a"], summary.customers["b"]
    assert (a.served, a.records, a.cut_off_200s, a.statuses[429]) == (2, 5, 1, 1)
    assert (b.served, b.records, b.statuses[503], b.errors["timeout"]) == (1, 0, 1, 1)
    assert (summary.served, summary.records) == (3, 5)
    # latencies of complete replies only: 0.01 0.02 0.03 0.04 2.0
    assert summary.latency(0.5) == 0.03 and summary.latency(0.99) == 2.0 and summary.latency(0.0) == 0.01
    assert summarize([]).latency(0.5) == 0.0


def test_a_result_is_summarized_by_the_time_requests_were_sent() -> None:
    result = LoadResult([Outcome("a", t, 0.01, status) for t, status in [(1, 503), (2, 503), (3, 200), (4, 200)]], 0, 5)
    assert result.summary(since=2).statuses == Counter({503: 1, 200: 2})
    assert result.summary(since=2.5).statuses[503] == 0
    assert result.summary(until=2).statuses == Counter({503: 1})
    assert result.rate == 4 / 5


@pytest.mark.parametrize(
    ("body", "records"),
    [(b'{"data": [1, 2, 3], "meta": {}}', 3), (b"[1, 2]", 2), (b'{"data": "x"}', 0), (b"not json", 0), (b"{}", 0)],
)
def test_records_are_the_data_array_or_the_top_level_array(body: bytes, records: int) -> None:
    assert count_records(body) == records


# against a real gateway -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {"small": generate_key(), "big": generate_key()}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Iterator[Gateway]:
    config = tmp_path_factory.mktemp("load") / "plans.yaml"
    config.write_text(
        "version: 1\nroutes:\n  - {match: 'GET /health', public: true}\n"
        "plans:\n  small: {quotas: {calls: 20}}\n  big: {quotas: {calls: 1000000}}\n"
        f"customers:\n  small: {{plan: small, keys: ['{hash_key(keys['small'])}']}}\n"
        f"  big: {{plan: big, keys: ['{hash_key(keys['big'])}']}}\n"
    )
    with Gateway("tests.support:data_app", Path(config), "memory://", workers=1,
                 env={"MG_ADMIN_TOKEN": ADMIN_TOKEN}) as running:  # fmt: skip
        yield running


def usage(gateway: Gateway, customer: str) -> tuple[int, int]:
    document = httpx.get(
        f"http://127.0.0.1:{gateway.port}/_meterguard/customers/{customer}/usage",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    ).json()
    return document["calls"]["used"], document["records"]["used"]


async def test_the_driver_spreads_requests_and_counts_what_was_served(gateway: Gateway, keys: dict[str, str]) -> None:
    clients = [("small", keys["small"]), ("big", keys["big"])]
    result = await drive(gateway.port, clients, "/v1/posts/1?n=3", connections=4, requests=60)
    summary = result.summary()
    assert summary.requests == 60 and summary.errors == Counter()
    small, big = summary.customers["small"], summary.customers["big"]
    assert (small.served, small.records, small.statuses[429]) == (20, 60, 10)
    assert (big.served, big.records) == (30, 90)
    assert usage(gateway, "small") == (20, 60)  # what the clients counted is what the gateway billed

    big_before = usage(gateway, "big")
    paced = await drive(gateway.port, clients[1:], "/v1/posts/1?n=1", connections=2, seconds=1.0, rate=40)
    assert len(paced.outcomes) == 40  # request i is due at i/40 s: i = 0..39 fall within the second
    assert paced.ended - paced.started >= 0.95
    assert paced.summary().statuses == Counter({200: len(paced.outcomes)})
    assert usage(gateway, "big") == (big_before[0] + len(paced.outcomes), big_before[1] + len(paced.outcomes))


def test_the_background_load_reconnects_after_resets(
    gateway: Gateway, keys: dict[str, str], fault_proxy: Callable[[int], FaultProxy]
) -> None:
    proxy = fault_proxy(gateway.port)  # between the clients and the gateway
    with BackgroundLoad(proxy.port, [("big", keys["big"])], "/v1/posts/1?n=2", connections=4, seconds=1.5,
                        rate=100, timeout=1.0) as load:  # fmt: skip
        time.sleep(0.5)
        delayed_at = time.monotonic()
        proxy.delay(0.3)  # replies in flight when the connections are reset
        time.sleep(0.1)
        assert proxy.reset_all() >= 1
        reset_at = time.monotonic()
        proxy.heal()
    result = load.result()
    # a request sent just before the delay may have its reply held, then reset: leave a margin
    before, after = result.summary(until=delayed_at - 0.2), result.summary(since=reset_at + 0.05)
    assert before.statuses == Counter({200: before.requests}) and before.requests >= 20
    assert sum(result.summary().errors.values()) >= 1
    assert set(result.summary().errors) <= {"reset", "incomplete"}
    assert after.statuses == Counter({200: after.requests}) and after.requests >= 50  # new connections
    assert proxy.stats().connections > 4
