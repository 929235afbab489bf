"""Prometheus metrics at {admin.path}/metrics (CONTRACT 11), in-process on a real Redis.

Every figure is read back from the exposition text with prometheus_client's own parser, after a
known sequence of requests, so a miscount in any family fails here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterguard import MeterGuard, parse_config
from meterguard.metrics import DISCARD, Buckets, Metrics

from .conftest import StoreFactory
from .support import data_app

TOKEN = "metrics-test-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PLANS = """
version: 1
routes:
  - {match: "GET /health", public: true}
  - {match: "GET /v1/posts/search"}
  - {match: "GET /v1/posts/archive", plans: [pro]}
plans:
  free:
    rate_limits: ["1000/minute"]
    quotas: {calls: 4}
  pro:
    quotas: {calls: 1000}
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def gateway(
    monkeypatch: pytest.MonkeyPatch, store_factory: StoreFactory
) -> AsyncIterator[tuple[httpx.AsyncClient, MeterGuard]]:
    monkeypatch.setenv("MG_ADMIN_TOKEN", TOKEN)
    guard = MeterGuard(data_app, config=parse_config(PLANS), store=await store_factory("redis"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://api.test") as client:
        yield client, guard


async def test_every_family_counts_what_was_done(gateway: tuple[httpx.AsyncClient, MeterGuard]) -> None:
    client, guard = gateway
    key = {}
    for customer, plan in (("m-free", "free"), ("m-pro", "pro")):
        assert (
            await client.post("/_meterguard/customers", headers=ADMIN, json={"id": customer, "plan": plan})
        ).is_success
        key[plan] = {
            "x-api-key": (await client.post(f"/_meterguard/customers/{customer}/keys", headers=ADMIN)).json()["key"]
        }

    statuses = []
    for n in (3, 5, 7):  # 15 records, 3 calls
        statuses.append((await client.get(f"/v1/posts/search?n={n}", headers=key["free"])).status_code)
    replay = {**key["free"], "idempotency-key": "metrics-1"}
    statuses.append((await client.get("/v1/posts/search?n=2", headers=replay)).status_code)  # 4th call, 2 records
    statuses.append((await client.get("/v1/posts/search?n=2", headers=replay)).status_code)  # replayed, unbilled
    statuses.append((await client.get("/v1/posts/search", headers=key["free"])).status_code)  # quota
    statuses.append((await client.get("/v1/posts/archive", headers=key["free"])).status_code)  # forbidden
    statuses.append((await client.get("/v1/posts/search")).status_code)  # no key
    statuses.append((await client.get("/v1/posts/search", headers={"x-api-key": "mg_live_nope"})).status_code)
    statuses.append((await client.get("/v1/posts/archive?n=1", headers=key["pro"])).status_code)
    statuses.append((await client.get("/health")).status_code)  # public: not metered
    assert statuses == [200, 200, 200, 200, 200, 429, 403, 401, 401, 200, 200]

    assert (await client.get("/_meterguard/metrics")).status_code == 401  # the admin token is needed
    response = await client.get("/_meterguard/metrics", headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    requests = "meterguard_requests_total"
    assert value(found, requests, plan="free", outcome="admitted") == 4
    assert value(found, requests, plan="free", outcome="replayed") == 1
    assert value(found, requests, plan="free", outcome="quota") == 1
    assert value(found, requests, plan="free", outcome="forbidden") == 1
    assert value(found, requests, plan="", outcome="unauthenticated") == 2
    assert value(found, requests, plan="pro", outcome="admitted") == 1
    assert sum(v for (name, _), v in found.items() if name == requests) == 10  # the public /health is not a decision
    assert value(found, "meterguard_records_total", plan="free") == 17  # the replay's 2 are not billed again
    assert value(found, "meterguard_records_total", plan="pro") == 1
    assert value(found, "meterguard_store_seconds_count", operation="batch") >= 8  # at least one per decision
    assert value(found, "meterguard_store_seconds_bucket", operation="batch", le="+Inf") == value(
        found, "meterguard_store_seconds_count", operation="batch"
    )
    assert 0 < value(found, "meterguard_store_seconds_sum", operation="batch") < 5
    assert value(found, "meterguard_batch_size_count") == value(
        found, "meterguard_store_seconds_count", operation="batch"
    )
    assert value(found, "meterguard_auth_cache_total", result="miss") == 2  # one per key; a malformed one is no lookup
    assert value(found, "meterguard_auth_cache_total", result="hit") == 6
    assert value(found, "meterguard_store_seconds_count", operation="auth_lookup") == 2
    assert ("meterguard_spool_depth", ()) in found

    # A second scrape adds nothing that did not happen; one more request adds exactly one.
    await client.get("/v1/posts/archive?n=1", headers=key["pro"])
    again = samples((await client.get("/_meterguard/metrics", headers=ADMIN)).text)
    assert value(again, requests, plan="pro", outcome="admitted") == 2
    assert value(again, requests, plan="free", outcome="admitted") == 4
    guard.metrics.spool_depth.set(7)  # the API the ledger feeds
    again = samples((await client.get("/_meterguard/metrics", headers=ADMIN)).text)
    assert value(again, "meterguard_spool_depth") == 7


async def test_each_gateway_has_its_own_registry(gateway: tuple[httpx.AsyncClient, MeterGuard]) -> None:
    client, guard = gateway
    other = MeterGuard(data_app, config=parse_config(PLANS))  # a second one in the same process: no clash
    other.metrics.count("free", "admitted")
    assert other.metrics is not guard.metrics and guard.metrics is not DISCARD
    found = samples((await client.get("/_meterguard/metrics", headers=ADMIN)).text)
    assert value(found, "meterguard_requests_total", plan="free", outcome="admitted") == 0
    assert (
        value(
            samples(other.metrics.exposition().decode()), "meterguard_requests_total", plan="free", outcome="admitted"
        )
        == 1
    )


def test_histogram_buckets_match_prometheus_semantics() -> None:
    metrics = Metrics(multiprocess_dir="")
    for seconds in (0.0001, 0.00011, 0.003, 9.0):  # on a bound, just above, in the middle, past the last
        metrics.store_call("batch", seconds, 3)
    found = samples(metrics.exposition().decode())
    bucket = "meterguard_store_seconds_bucket"
    assert value(found, bucket, operation="batch", le="0.0001") == 1
    assert value(found, bucket, operation="batch", le="0.00025") == 2
    assert value(found, bucket, operation="batch", le="0.005") == 3
    assert value(found, bucket, operation="batch", le="2.5") == 3
    assert value(found, bucket, operation="batch", le="+Inf") == 4
    assert value(found, "meterguard_batch_size_bucket", le="4.0") == 4
    assert Buckets((1.0, 2.0)).counts == [0, 0, 0]
