"""Billing across 4 uvicorn workers: included quota -> overage -> spend cap, in both modes.

The customer's calls are fired from 64 simultaneous connections, wave after wave; the 402
must start exactly at the cap, and the usage document, the statement and the exported events
must agree with the amount computed by hand.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest

from meterguard import parse_config
from meterguard.customers import Directory
from meterguard.export import export_events, open_sink
from meterguard.store import store_from_url

from .conftest import REDIS_URL, drop_keys
from .wave import Gateway, Reply, connect, wave

ADMIN_TOKEN = "billing-workers-token"
CLIENTS = 64
PLANS = """
version: 1
consistency: {mode}
routes:
  - {{match: "GET /health", public: true}}
plans:
  metered:
    price: "100.00"
    quotas: {{calls: 100}}
    overage:
      calls: {{unit: 10, price: "1.00"}}    # $0.10 a call past the first 100
      spend_cap: "5.00"                      # reached after 50 overage calls
"""


async def fire(port: int, keys: list[str], waves: int) -> list[Reply]:
    connections = await connect(port, CLIENTS)
    replies: list[Reply] = []
    try:
        for _ in range(waves):
            replies += await wave(connections, [("/v1/posts/1?n=0", {"x-api-key": keys[i % len(keys)]})
                                                for i in range(CLIENTS)])  # fmt: skip
    finally:
        await asyncio.gather(*(conn.close() for conn in connections))
    return replies


@pytest.mark.parametrize("mode", ["exact", "fast"])
async def test_quota_then_overage_then_402_exactly_at_the_cap(tmp_path: Path, key_prefix: str, mode: str) -> None:
    url = f"{REDIS_URL}?prefix={key_prefix}"
    plans = PLANS.format(mode=mode)
    config = tmp_path / "plans.yaml"
    config.write_text(plans)
    store = store_from_url(url)
    directory = Directory(parse_config(plans), store)
    customer = f"billed-{uuid.uuid4().hex[:8]}"
    await directory.create(customer, "metered")
    keys = [(await directory.issue_key(customer))[1] for _ in range(4)]
    gateway = Gateway("tests.support:data_app", config, url, workers=4, env={"MG_ADMIN_TOKEN": ADMIN_TOKEN})
    try:
        with gateway:
            replies = await fire(gateway.port, keys, waves=4)
            statuses = [reply.status for reply in replies]
            assert statuses.count(200) == 150  # 100 included + 50 overage calls at $0.10 = the $5.00 cap
            assert statuses.count(402) == len(replies) - 150
            for reply in replies:
                if reply.status == 402:
                    assert reply.json()["type"] == "https://meterguard.dev/problems/spend-cap-reached"
            admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", headers=admin) as client:
                usage = (await client.get(f"/_meterguard/customers/{customer}/usage")).json()
                period = usage["period"]["start"][:7]
                statement = (await client.get(f"/_meterguard/customers/{customer}/statement?period={period}")).json()
        assert usage["calls"] == {"used": 150, "included": 100, "remaining": 0, "overage": 50}
        assert usage["charges"] == {"currency": "USD", "base": "100.00", "overage": "5.00", "total": "105.00",
                                    "spend_cap": "5.00"}  # fmt: skip
        assert usage["rejected"]["spend_cap"] == len(replies) - 150
        assert statement["total"] == "105.00"
        assert statement["base"] == "100.00"
        line_total = sum(float(line["amount"]) for line in statement["lines"])
        assert f"{line_total:.2f}" == "5.00"

        output = tmp_path / "events.jsonl"
        sink = open_sink(str(output), "jsonl")
        try:
            await export_events(store, [customer], sink)
        finally:
            sink.close()
        events = [json.loads(line) for line in output.read_text().splitlines()]
        usage_events = [event for event in events if event.get("type") == "usage"]
        assert sum(int(event["calls"]) for event in usage_events) == 150
        assert len({event["event_id"] for event in events}) == len(events)
    finally:
        await store.aclose()
        await drop_keys(REDIS_URL, key_prefix)
