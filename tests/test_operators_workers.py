"""Operators with 2 real uvicorn workers on one Redis: metrics add up, reload reaches every worker.

The wrapped app (tests/_pid_app.py) answers with its process id, so a test knows which worker
served each response; the plans differ in one rate window, which every metered response names in
its RateLimit-Policy header, so a test knows which version of plans.yaml decided it.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meterguard.metrics import SYNC_SECONDS

from .conftest import REDIS_URL, drop_keys
from .wave import Gateway, Reply, connect, wave

TOKEN = "operators-workers-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 16


def plans(window: int, extra: str = "") -> str:
    return f"""version: 1
routes:
  - {{match: "GET /health", public: true}}
plans:
  basic:
    rate_limits: ["{window}/minute"]
{extra}"""


V1, V2 = plans(100000), plans(200000)
# Line 7 is wrong: the error names the file and that line.
BAD = plans(100000, "    quotas: {calls: -5}\n")


@dataclass
class Deployment:
    gateway: Gateway
    config: Path
    log: Path
    key: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"


@pytest.fixture
async def deployment(tmp_path: Path, key_prefix: str) -> AsyncIterator[Deployment]:
    config, log = tmp_path / "plans.yaml", tmp_path / "gateway.log"
    config.write_text(V1)
    env = {"MG_ADMIN_TOKEN": TOKEN, "MG_LOG_FORMAT": "json"}
    gateway = Gateway("tests._pid_app:app", config, f"{REDIS_URL}?prefix={key_prefix}", workers=2, env=env, log=log)
    with gateway:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}", headers=ADMIN) as admin:
            assert (await admin.post("/_meterguard/customers", json={"id": "ops", "plan": "basic"})).status_code == 201
            key = (await admin.post("/_meterguard/customers/ops/keys")).json()["key"]
        await both_workers_up(gateway.port)
        yield Deployment(gateway, config, log, key)
    await drop_keys(REDIS_URL, key_prefix)


async def fire(port: int, key: str, waves: int) -> list[Reply]:
    """CLIENTS connections (spread over both workers by the kernel), one request on each per wave."""
    connections = await connect(port, CLIENTS)
    try:
        replies: list[Reply] = []
        for _ in range(waves):
            replies += await wave(connections, [("/v1/posts/x?n=3", {"x-api-key": key})] * CLIENTS)
        return replies
    finally:
        for conn in connections:
            await conn.close()


async def fire_until(port: int, key: str, done: asyncio.Future[object], then: float) -> list[Reply]:
    """fire() wave after wave until ``done`` has been done for ``then`` seconds (at most 60 s), so
    that the load outlasts what it runs beside however fast the gateway answers."""
    connections = await connect(port, CLIENTS)
    loop = asyncio.get_running_loop()
    deadline, ended = loop.time() + 60, None
    try:
        replies: list[Reply] = []
        while loop.time() < deadline and (ended is None or loop.time() < ended + then):
            replies += await wave(connections, [("/v1/posts/x?n=3", {"x-api-key": key})] * CLIENTS)
            if ended is None and done.done():
                ended = loop.time()
        return replies
    finally:
        for conn in connections:
            await conn.close()


async def fire_at_both(port: int, key: str) -> list[Reply]:
    """fire() until both workers have answered (or 10 rounds): the kernel may hand a busy moment's
    connections all to one worker, and a test about every worker must hear from both."""
    replies: list[Reply] = []
    for _ in range(10):
        replies += await fire(port, key, waves=3)
        if len(pids(replies)) == 2:
            break
    return replies


async def both_workers_up(port: int) -> None:
    """Gateway.start returns when one worker answers; wait until the other one does too."""
    for _ in range(100):
        connections = await connect(port, CLIENTS)
        try:
            replies = await wave(connections, [("/health", {})] * CLIENTS)
        finally:
            for conn in connections:
                await conn.close()
        if len(pids(replies)) == 2:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the second worker never answered")


def version_of(reply: Reply) -> int:
    policy = reply.headers["ratelimit-policy"]
    return 2 if "q=200000" in policy else 1 if "q=100000" in policy else 0


def pids(replies: list[Reply]) -> set[int]:
    return {reply.json()["pid"] for reply in replies}


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, str], float]:
    response = await client.get("/_meterguard/metrics", headers=ADMIN)
    assert response.status_code == 200
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, json.dumps(sample.labels, sort_keys=True))] = sample.value
    return found


def admitted(found: dict[tuple[str, str], float]) -> float:
    return found.get(("meterguard_requests_total", json.dumps({"outcome": "admitted", "plan": "basic"})), 0.0)


async def test_metrics_of_both_workers_add_up(deployment: Deployment) -> None:
    # fire_at_both: the kernel may hand one busy moment's connections all to one worker.
    replies = await fire_at_both(deployment.gateway.port, deployment.key)
    assert {reply.status for reply in replies} == {200}
    assert len(pids(replies)) == 2, "both workers must have served, or the sum proves nothing"
    await asyncio.sleep(SYNC_SECONDS + 0.5)  # every worker writes its numbers once a second
    async with httpx.AsyncClient(base_url=deployment.base) as client:
        # Each scrape lands on either worker; every one of them must show the sum of both.
        for _ in range(6):
            found = await scrape(client)
            assert admitted(found) == len(replies)
            records = found[("meterguard_records_total", json.dumps({"plan": "basic"}))]
            assert records == 3 * len(replies)


async def test_reload_endpoint_swaps_plans_in_every_worker_under_load(deployment: Deployment) -> None:
    port, key = deployment.gateway.port, deployment.key
    before = await fire(port, key, waves=2)
    assert {version_of(reply) for reply in before} == {1}

    async def reload_midway() -> httpx.Response:
        await asyncio.sleep(0.3)
        deployment.config.write_text(V2)
        async with httpx.AsyncClient(base_url=deployment.base) as client:
            return await client.post("/_meterguard/reload", headers=ADMIN)

    reloading = asyncio.ensure_future(reload_midway())
    # The load goes on 0.5 s past the reload: by then the other worker has heard of it.
    load = await fire_until(port, key, reloading, then=0.5)
    reloaded = await reloading
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["changed"] == ["basic"] and reloaded.json()["notified"] is True
    assert [reply.status for reply in load if reply.status != 200] == [], "a request failed during the reload"
    versions = [version_of(reply) for reply in load]
    assert versions[0] == 1 and versions[-1] == 2 and set(versions) == {1, 2}

    await asyncio.sleep(0.5)  # the other worker hears the store's change event
    after = await fire_at_both(port, key)
    assert len(pids(after)) == 2
    assert {version_of(reply) for reply in after} == {2}, "a worker still decides under the old plans"


async def test_sighup_to_the_master_reloads_every_worker_and_a_bad_file_changes_nothing(
    deployment: Deployment,
) -> None:
    gateway, port, key = deployment.gateway, deployment.gateway.port, deployment.key
    assert gateway.process is not None
    deployment.config.write_text(BAD)
    gateway.process.send_signal(signal.SIGHUP)
    await asyncio.sleep(1.0)
    replies = await fire_at_both(port, key)
    assert {reply.status for reply in replies} == {200} and len(pids(replies)) == 2
    assert {version_of(reply) for reply in replies} == {1}, "a bad file must leave the running plans"
    errors = [json.loads(line) for line in deployment.log.read_text().splitlines() if line.startswith("{")]
    refused = [line for line in errors if line["level"] == "ERROR" and "reload refused" in line["message"]]
    assert len(refused) == 2, "each worker logs the refusal"
    assert f"{deployment.config}:7: plans.basic.quotas.calls" in refused[0]["message"]

    deployment.config.write_text(V2)
    gateway.process.send_signal(signal.SIGHUP)
    await asyncio.sleep(1.0)
    replies = await fire_at_both(port, key)
    assert len(pids(replies)) == 2
    assert {version_of(reply) for reply in replies} == {2}
    assert gateway.process.poll() is None, "SIGHUP must not stop the server"
    # The whole run's log never holds the key.
    assert key not in deployment.log.read_text()
