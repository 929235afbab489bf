"""What a fast-path process killed with SIGKILL loses, measured against the documented bound.

A fast-path process decides from leased units and flushes its usage at least every second
(lease.py). Killed with -9 it cannot flush: the calls it served since its last flush are lost
to the usage, at most the units of the leases it held (MAX_LEASE per customer and set of
windows; one here), and the quota never runs past its limit because those units stay counted
as reserved. The loss is real, so the bound is not vacuous: with the bound set to 0 the test
failed in 2 of 3 runs ("served 760, counted 705", "served 720, counted 616").
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from meterguard import parse_config
from meterguard.customers import Directory
from meterguard.lease import FLUSH_INTERVAL_SECONDS, MAX_LEASE, TURN_DELAY_SECONDS
from meterguard.periods import period_for
from meterguard.store import store_from_url

from .conftest import REDIS_URL, drop_keys
from .wave import Connection, Gateway, connect

ADMIN_TOKEN = "crash-test-token"
PLANS = """
version: 1
consistency: fast
routes:
  - {match: "GET /health", public: true}
plans:
  big: {quotas: {calls: 1000000}}
"""
CLIENTS = 32


def worker_pids(gateway: Gateway) -> list[int]:
    assert gateway.process is not None
    children = subprocess.run(["pgrep", "-P", str(gateway.process.pid)], capture_output=True, text=True).stdout.split()
    workers = []
    for pid in map(int, children):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            workers.append(pid)
    return workers


async def one_round(connections: list[Connection], key: str) -> tuple[int, int, list[Connection]]:
    """One request on every live connection: (served 200s, requests with no reply, live connections)."""
    for conn in connections:
        conn.writer.write(conn.request_bytes("/v1/posts/1?n=0", {"x-api-key": key}))
    replies = await asyncio.gather(*(conn.read_reply() for conn in connections), return_exceptions=True)
    served = sum(1 for reply in replies if not isinstance(reply, BaseException) and reply.status == 200)
    live = [conn for conn, reply in zip(connections, replies, strict=True) if not isinstance(reply, BaseException)]
    # The killed worker's connections are closed here: left to the garbage collector, each warns
    # "unclosed StreamWriter" in whatever test is running when it is collected, and fails it (a
    # connection the worker closed cleanly stays half-open: StreamReaderProtocol keeps it for writing).
    dead = [conn for conn in connections if conn not in live]
    await asyncio.gather(*(conn.close() for conn in dead), return_exceptions=True)
    return served, len(connections) - len(live), live


async def test_sigkill_loses_at_most_the_leased_units_of_the_killed_process(tmp_path: Path, key_prefix: str) -> None:
    url = f"{REDIS_URL}?prefix={key_prefix}"
    config = tmp_path / "plans.yaml"
    config.write_text(PLANS)
    store = store_from_url(url)
    directory = Directory(parse_config(PLANS), store)
    customer = f"crash-{uuid.uuid4().hex[:8]}"
    await directory.create(customer, "big")
    _, key = await directory.issue_key(customer)
    gateway = Gateway("tests.support:data_app", config, url, workers=4, env={"MG_ADMIN_TOKEN": ADMIN_TOKEN})
    gateway.start()
    try:
        connections = await connect(gateway.port, CLIENTS)
        served = unanswered = 0
        for _ in range(15):  # warm up: every worker holds a lease, sized to the traffic
            got, lost, connections = await one_round(connections, key)
            served, unanswered = served + got, unanswered + lost
        victims = worker_pids(gateway)
        assert len(victims) == 4
        os.kill(victims[0], signal.SIGKILL)
        for _ in range(10):
            got, lost, connections = await one_round(connections, key)
            served, unanswered = served + got, unanswered + lost
        await asyncio.gather(*(conn.close() for conn in connections), return_exceptions=True)
        # The surviving workers flush within the interval: wait until the usage stops moving, for
        # two intervals in a row (one was not enough on a busy machine, where a flush can be late).
        last, still = None, 0
        for _ in range(30):
            await asyncio.sleep(FLUSH_INTERVAL_SECONDS + TURN_DELAY_SECONDS + 0.2)
            now_used = (await store.usage(customer, period_for(time.time()).id)).calls
            still = still + 1 if now_used == last else 0
            if still == 2:
                break
            last = now_used
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.port}") as client:
            document = (
                await client.get(f"/_meterguard/customers/{customer}/usage",
                                 headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
            ).json()  # fmt: skip
        used = document["calls"]["used"]
        lost_usage = served - used
        # Requests that got no reply may have been counted without the client seeing them.
        assert -unanswered <= lost_usage <= MAX_LEASE, f"served {served}, counted {used}, unanswered {unanswered}"
    finally:
        gateway.stop()
        await store.aclose()
        await drop_keys(REDIS_URL, key_prefix)
