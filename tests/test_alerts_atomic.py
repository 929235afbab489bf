"""Alerts decided in the step that changes usage: every threshold once per period, however fast
the burst, refusals and settlements included (CONTRACT 11, "Alerts").

Before, the gateway sampled usage at most once a second per customer and only on admitted
requests: a 10-call plan with alerts at 0.5 and 1.0, hit by 12 calls in under a second and then
refused, sent no alert at all, and a customer stopped by its spend cap never got the 1.0 spend
alert. Now the store checks the thresholds whenever usage changes and on every refusal (in the
Lua script on Redis), reports them to the gateway until one process has queued the webhook, and
each fires once (alerts.Alerts.fire claims it in the store).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from meterguard import MeterGuard, parse_config
from meterguard.alerts import alerting_for
from meterguard.billing import cap_cents
from meterguard.keys import generate_key, hash_key
from meterguard.store.base import Fired, Meter, Settlement, Store

from . import test_alerts
from .conftest import REDIS_URL, StoreFactory, drop_keys
from .store.test_store_behaviour import PERIOD, TODAY, period_end, request
from .support import data_app
from .test_alerts import Receiver, wait_for
from .wave import Gateway, connect, wave

SECRET = "whsec_atomic"
PLANS = """\
version: 1
webhooks: {{url: "{url}", secret_env: MG_TEST_WEBHOOK_SECRET, timeout_seconds: 2}}
routes:
  - {{match: "GET /health", public: true}}
plans:
  small:
    quotas: {{calls: 10}}
    alerts: [0.5, 1.0]
  paying:
    quotas: {{calls: 2}}
    overage:
      calls: {{unit: 1, price: "1.00"}}
      spend_cap: "3.00"
    alerts: [1.0]
customers:
  tiny: {{plan: small, keys: ["{tiny}"]}}
  payer: {{plan: paying, keys: ["{payer}"]}}
"""


def plans_text(url: str = "http://127.0.0.1:9/hook", tiny: str = "", payer: str = "") -> str:
    return PLANS.format(url=url, tiny=hash_key(tiny or generate_key()), payer=hash_key(payer or generate_key()))


@pytest.fixture
def heard() -> list[Fired]:
    return []


async def sinked(store_factory: StoreFactory, kind: str, heard: list[Fired]) -> Store:
    store = await store_factory(kind)
    store.set_alert_sink(heard.extend)
    return store


@pytest.mark.parametrize("kind", ["memory", "redis", "cluster"])
async def test_a_burst_crosses_each_threshold_once_and_refusals_add_nothing(
    store_factory: StoreFactory, kind: str, heard: list[Fired]
) -> None:
    store = await sinked(store_factory, kind, heard)
    plan = parse_config(plans_text()).plans["small"]
    alerting = alerting_for(plan, None)
    req = request("acme", calls=Meter(10), end=period_end())
    decisions = await asyncio.gather(*(store.admit(replace(req, alerting=alerting)) for _ in range(12)))
    assert sum(d.admitted for d in decisions) == 10
    names = {f.name for f in heard}
    assert names == {"calls:0.5", "calls:1"}
    assert {f.name: f.level for f in heard} == {"calls:0.5": 5, "calls:1": 10}
    for name in names:
        await store.ack_alerts("acme", PERIOD, [name])
    heard.clear()
    refused = await store.admit(replace(req, alerting=alerting))
    assert not refused.admitted
    assert heard == []  # acknowledged: never reported again this period


@pytest.mark.parametrize("kind", ["memory", "redis", "cluster"])
async def test_records_and_spend_cross_in_the_settlement_that_reaches_them(
    store_factory: StoreFactory, kind: str, heard: list[Fired]
) -> None:
    store = await sinked(store_factory, kind, heard)
    config = parse_config(plans_text().replace("quotas: {calls: 2}", "quotas: {calls: 2, records: 100}"))
    plan = config.plans["paying"]
    alerting = alerting_for(plan, cap_cents(plan))
    assert alerting is not None
    req = replace(request("acme", calls=Meter(2, 1, 1_000_000), cap=300, end=period_end()), alerting=alerting)
    for _ in range(2):
        assert (await store.admit(req)).admitted
    assert {f.name for f in heard} == {"calls:1"}  # the second of two included calls
    await store.ack_alerts("acme", PERIOD, ["calls:1"])  # delivered (else reported again)
    heard.clear()
    settlement = Settlement("acme", "key1", req.route, True, PERIOD, req.period_end, 100, TODAY, alerting=alerting)
    await store.settle(settlement)
    assert {f.name for f in heard} == {"records:1"}
    await store.ack_alerts("acme", PERIOD, ["records:1"])
    for _ in range(3):  # $1.00 a call past the quota: the third reaches the $3.00 cap
        assert (await store.admit(req)).admitted
    assert "spend:1" in {f.name for f in heard}
    refused = await store.admit(req)
    assert (refused.admitted, refused.reason) == (False, "spend_cap")


async def test_unacknowledged_alerts_are_reported_again_on_redis(
    store_factory: StoreFactory, heard: list[Fired]
) -> None:
    """A process that heard an alert and died before queueing it: the next batch reports it again."""
    store = await sinked(store_factory, "redis", heard)
    plan = parse_config(plans_text()).plans["small"]
    req = replace(request("acme", calls=Meter(10), end=period_end()), alerting=alerting_for(plan, None))
    for _ in range(5):
        await store.admit(req)
    assert [f.name for f in heard] == ["calls:0.5"]
    await store.admit(req)
    assert [f.name for f in heard] == ["calls:0.5", "calls:0.5"]  # still pending
    await store.ack_alerts("acme", PERIOD, ["calls:0.5"])
    await store.admit(req)
    assert [f.name for f in heard] == ["calls:0.5", "calls:0.5"]


receiver = test_alerts.receiver  # the webhook receiver fixture, shared with test_alerts.py


def names_of(receiver: Receiver) -> list[str]:
    return sorted(f"{json.loads(r.body)['meter']}:{json.loads(r.body)['threshold']:g}" for r in receiver.received)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_burst_then_refusals_through_the_gateway_sends_each_alert_once(
    store_factory: StoreFactory, kind: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MG_TEST_WEBHOOK_SECRET", SECRET)
    tiny, payer = generate_key(), generate_key()
    config = parse_config(plans_text(receiver.url, tiny, payer))
    guard = MeterGuard(data_app, config=config, store=await store_factory(kind))
    transport = httpx.ASGITransport(app=guard)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        started = time.monotonic()
        replies = await asyncio.gather(*(client.get("/v1/posts/1?n=0", headers={"x-api-key": tiny}) for _ in range(12)))
        assert sorted(r.status_code for r in replies) == [200] * 10 + [429] * 2
        for _ in range(5):  # the spend cap: two calls included, then $1.00 each up to $3.00
            await client.get("/v1/posts/1?n=0", headers={"x-api-key": payer})
        await wait_for(lambda: len(receiver.received) >= 4, timeout=5.0)
        assert time.monotonic() - started < 5.0
        await asyncio.sleep(0.5)  # nothing more arrives
    assert names_of(receiver) == ["calls:0.5", "calls:1", "calls:1", "spend:1"]
    await guard.aclose()


async def test_two_workers_on_redis_send_each_alert_once(tmp_path: Path, receiver: Receiver, key_prefix: str) -> None:
    tiny, payer = generate_key(), generate_key()
    config = tmp_path / "plans.yaml"
    config.write_text(plans_text(receiver.url, tiny, payer))
    env = {"MG_TEST_WEBHOOK_SECRET": SECRET}
    try:
        with Gateway("tests.support:data_app", config, f"{REDIS_URL}?prefix={key_prefix}", 2, env=env) as gateway:
            connections = await connect(gateway.port, 12)
            started = time.monotonic()
            replies = await wave(connections, [("/v1/posts/1?n=0", {"x-api-key": tiny})] * 12)
            assert sorted(r.status for r in replies) == [200] * 10 + [429] * 2
            await wait_for(lambda: len(receiver.received) >= 2, timeout=5.0)
            assert time.monotonic() - started < 5.0
            await asyncio.sleep(1.0)
            for conn in connections:
                await conn.close()
    finally:
        await drop_keys(REDIS_URL, key_prefix)  # the workers' keys: no store fixture made them
    assert names_of(receiver) == ["calls:0.5", "calls:1"]
