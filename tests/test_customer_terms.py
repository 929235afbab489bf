"""A customer's own spend cap and plan history, through the gateway, on every store."""

from __future__ import annotations

from decimal import Decimal

import httpx

from meterguard import MeterGuard, parse_config
from meterguard.store.base import Store

from .support import data_app

PLANS = """
version: 1
plans:
  pro:
    price: "100.00"
    quotas: {calls: 2}
    overage:
      calls: {unit: 1, price: "1.00"}
      spend_cap: "100.00"
  basic:
    price: "10.00"
    quotas: {calls: 1000}
"""


async def test_a_customers_own_spend_cap_overrides_the_plans(store: Store) -> None:
    guard = MeterGuard(data_app, config=parse_config(PLANS), store=store)
    await guard.directory.create("acme", "pro")
    _, key = await guard.directory.issue_key("acme")
    record = await guard.directory.update("acme", spend_cap=Decimal("2.00"))
    assert (await store.get_customer("acme")) == record  # the cap survives the store round trip
    guard.authenticator.invalidate()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
        statuses = [(await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code for _ in range(6)]
        assert statuses == [200, 200, 200, 200, 402, 402]  # 2 included, $1 + $1 of overage, then the $2 cap
        await guard.directory.update("acme", spend_cap=None)  # back to the plan's $100
        guard.authenticator.invalidate()
        assert (await client.get("/v1/posts/1?n=0", headers={"x-api-key": key})).status_code == 200
    await guard.aclose()


async def test_plan_history_survives_the_store(store: Store) -> None:
    guard = MeterGuard(data_app, config=parse_config(PLANS), store=store)
    await guard.directory.create("acme", "pro")
    await guard.directory.update("acme", plan="basic")
    record = await store.get_customer("acme")
    assert record is not None
    assert [plan for _, plan in record.plan_history] == ["pro", "basic"]
    assert record.plan == "basic"
    await guard.aclose()
