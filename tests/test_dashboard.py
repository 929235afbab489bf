"""The dashboard in headless Chromium (Debian's package, driven by Playwright): log in, see figures.

The gateway is a real uvicorn process on Redis with customers that have usage; the page is opened
with no token, the token typed into its password field, and the test reads customer ids, plan
names, usage figures, charges, the 90-day chart and the keys from the page. Any JavaScript error or
console error fails it. The screenshot goes to the test's temporary directory, or to the path in
MG_DASHBOARD_SCREENSHOT (`make screenshot` writes docs/img/dashboard.png): a test run leaves the
tracked image alone.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest

from .conftest import REDIS_URL, drop_keys
from .wave import Gateway

CHROMIUM = os.environ.get("MG_CHROMIUM", "/usr/bin/chromium")
TOKEN = "dashboard-test-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PLANS = """
version: 1
routes:
  - {match: "GET /health", public: true}
  - {match: "GET /v1/posts/search"}
plans:
  free:
    rate_limits: ["3/minute"]
    quotas: {calls: 50, records: 500}
  pro:
    price: "5000.00"
    quotas: {calls: 10, records: 100}
    overage:
      calls: {unit: 1, price: "1.00"}
      records: {unit: 10, price: "5.00"}
      spend_cap: "2500.00"
"""
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def test_dashboard_logs_in_and_shows_customers_usage_and_keys(tmp_path: Path) -> None:
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip("chromium is not installed: apt-get install chromium (Debian's package; make test installs it)")
    from playwright.sync_api import sync_playwright

    config = tmp_path / "plans.yaml"
    config.write_text(PLANS)
    prefix = f"mgtest-{uuid.uuid4().hex[:12]}"
    gateway = Gateway("tests.support:data_app", config, f"{REDIS_URL}?prefix={prefix}", workers=1,
                      env={"MG_ADMIN_TOKEN": TOKEN}, log=tmp_path / "gateway.log")  # fmt: skip
    try:
        with gateway:
            base = f"http://127.0.0.1:{gateway.port}"
            with httpx.Client(base_url=base) as client:
                keys = {}
                # tiny-app's key expires in 3 days: the page shows when, and that it is expiring
                expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * 86400))
                for customer, plan, body in (("acme-data", "pro", {}), ("tiny-app", "free", {"expires_at": expires})):
                    client.post("/_meterguard/customers", headers=ADMIN, json={"id": customer, "plan": plan})
                    url = f"/_meterguard/customers/{customer}/keys"
                    keys[customer] = client.post(url, headers=ADMIN, json=body).json()["key"]
                for _ in range(12):  # pro: 12 calls, 2 over its 10; 120 records, 20 over
                    client.get("/v1/posts/search?n=10", headers={"x-api-key": keys["acme-data"]})
                for _ in range(4):  # free: 3 admitted, 1 refused by the 3/minute window
                    client.get("/v1/posts/search?n=1", headers={"x-api-key": keys["tiny-app"]})

            errors: list[str] = []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
                page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
                page.goto(f"{base}/_meterguard/dashboard")
                page.wait_for_selector("#login:not([hidden])")
                assert page.is_hidden("#overview")
                page.fill("#token", TOKEN)
                page.click("#login button[type=submit]")
                page.wait_for_selector("tr.customer[data-customer='tiny-app']")
                page.wait_for_selector("#detail:not([hidden]) #chart rect", state="attached")
                table = page.inner_text("#customers")
                assert "acme-data" in table and "tiny-app" in table and "pro" in table and "free" in table
                assert "12 / 10 (+2 over)" in table  # calls against the quota
                assert "120 / 100 (+20 over)" in table
                assert "12.00 USD" in table  # 2 x $1.00 + 2 units of 10 records x $5.00
                assert "5012.00 USD" in table
                assert "1 / 0 / 0" in table  # tiny-app's refusal by the rate window
                assert page.locator("#chart rect").count() == 90
                assert keys["acme-data"][:20] not in page.content()  # keys are never shown, only prefixes
                assert "never" not in page.inner_text("#keys")  # the key was used: its last use is shown
                page.click("tr.customer[data-customer='tiny-app']")
                page.locator("#detail-title", has_text="tiny-app").wait_for()  # (wait_for_function would need CSP eval)
                tiny_keys = page.inner_text("#keys")
                assert expires in tiny_keys and "expiring" in tiny_keys
                page.click("tr.customer[data-customer='acme-data']")
                page.locator("#detail-title", has_text="acme-data").wait_for()
                assert page.evaluate("sessionStorage.getItem('meterguard.admin-token')") == TOKEN
                shot = Path(os.environ.get("MG_DASHBOARD_SCREENSHOT") or tmp_path / "dashboard.png")
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 0
                # A wrong token is refused and forgotten.
                page.click("#logout")
                page.fill("#token", "wrong-token")
                page.click("#login button[type=submit]")
                page.locator("#login-error", has_text="refused").wait_for()
                assert page.evaluate("sessionStorage.getItem('meterguard.admin-token')") is None
                browser.close()
            assert [error for error in errors if "401" not in error] == []
    finally:
        asyncio.run(drop_keys(REDIS_URL, prefix))
