"""Served equals usage under every Redis fault: real gateways, a real redis-server, real faults.

Each test runs ``meterguard serve`` (2 uvicorn workers) on a private redis-server (AOF,
``appendfsync always``) behind a fault-injecting proxy, drives paced keep-alive load through
it, breaks Redis in the middle (SIGSTOP, kill -9 and restart, replies dropped, a blackhole,
resets, delays), heals it, stops the gateway (which drains its ledger), and then reads every
customer's usage through the CLI. The figure checked, per customer: calls in the usage document
== complete 200s the clients received, records == records in those 200s. And once Redis has
been back for a second, no 503.

Checked to fail against the code before ledger v2 (commit 0969f80, these tests copied over): see
docs/reliability.md for the figures; e.g. SIGSTOP counted calls for requests answered 503, fast
mode counted flushes twice, fail_open lost the usage it served.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from meterguard.cli import main
from meterguard.keys import generate_key, hash_key

from .faultproxy import FaultProxy
from .load import BackgroundLoad, LoadResult
from .servers import RedisServer
from .wave import Gateway

CUSTOMERS = 4
RATE = 120  # requests per second over all connections
TIMEOUT = 0.5  # the gateway's socket timeout: also an admission's budget
PATH = "/v1/posts/1?n=3"


@dataclass
class Rig:
    redis: RedisServer
    proxy: FaultProxy
    config: Path
    prefix: str
    clients: list[tuple[str, str]]
    gateway: Gateway

    def store_url(self, via_proxy: bool) -> str:
        port = self.proxy.port if via_proxy else self.redis.port
        return f"redis://127.0.0.1:{port}/0?prefix={self.prefix}"

    def usage(self, customer: str) -> dict[str, object]:
        result = CliRunner().invoke(
            main, ["usage", customer, "--json", "--config", str(self.config), "--store", self.store_url(False)]
        )
        assert result.exit_code == 0, result.output
        document: dict[str, object] = json.loads(result.output)
        return document

    def check(self, result: LoadResult, back_at: float | None) -> None:
        """Served == usage for every customer; no 503 once Redis has been back for a second."""
        summary = result.summary()
        assert summary.served > 100, f"too little load to prove anything: {summary.statuses}"
        mismatches = {}
        for customer, _ in self.clients:
            served = summary.customers[customer]
            usage = self.usage(customer)
            calls, records = usage["calls"]["used"], usage["records"]["used"]  # type: ignore[index]
            if (calls, records) != (served.served, served.records) or served.cut_off_200s:
                mismatches[customer] = {
                    "served": (served.served, served.records),
                    "usage": (calls, records),
                    "cut_off_200s": served.cut_off_200s,
                    "unmetered": usage.get("unmetered"),
                }
        assert mismatches == {}, f"served != usage: {mismatches}; statuses {summary.statuses}"
        if back_at is not None:
            late = result.summary(since=back_at + 1.0).statuses.get(503, 0)
            assert late == 0, f"{late} requests got 503 more than a second after Redis came back"


def plans(consistency: str, policy: str, keys: dict[str, str]) -> str:
    customers = "\n".join(f'  {c}: {{plan: data, keys: ["{hash_key(k)}"]}}' for c, k in keys.items())
    return f"""
version: 1
consistency: {consistency}
on_store_error: {policy}
routes:
  - {{match: "GET /health", public: true}}
plans:
  data:
    rate_limits: ["100000/minute"]
customers:
{customers}
"""


@pytest.fixture
def rig(
    private_redis: RedisServer, fault_proxy: Callable[[int], FaultProxy], tmp_path: Path
) -> Iterator[Callable[[str, str], Rig]]:
    gateways: list[Gateway] = []

    def make(consistency: str, policy: str) -> Rig:
        token = uuid.uuid4().hex[:6]
        keys = {f"c{i}-{token}": generate_key() for i in range(CUSTOMERS)}
        config = tmp_path / "plans.yaml"
        config.write_text(plans(consistency, policy, keys))
        proxy = fault_proxy(private_redis.port)
        prefix = f"faults-{token}"
        store = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}&socket_timeout={TIMEOUT}"
        gateway = Gateway("tests.support:data_app", config, store, workers=2, log=tmp_path / "gateway.log")
        gateways.append(gateway)
        gateway.start()
        return Rig(private_redis, proxy, config, prefix, list(keys.items()), gateway)

    try:
        yield make
    finally:
        for gateway in gateways:
            gateway.stop()


def run(rig: Rig, fault: Callable[[], float | None], seconds: float = 6.0) -> tuple[LoadResult, float | None]:
    """Load for ``seconds``; ``fault`` runs after 1.5 s and returns when Redis was back (monotonic)."""
    with BackgroundLoad(rig.gateway.port, rig.clients, PATH, connections=12, seconds=seconds, rate=RATE) as load:
        time.sleep(1.5)
        back_at = fault()
    result = load.result()
    rig.gateway.stop()  # SIGTERM: the ledger drains, the fast path flushes
    return result, back_at


MODES = [pytest.param("exact", id="exact"), pytest.param("fast", id="fast")]


@pytest.mark.parametrize("consistency", MODES)
def test_redis_frozen_by_sigstop(rig: Callable[[str, str], Rig], consistency: str) -> None:
    """Decisions queued in the socket run after SIGCONT, for requests already answered 503: they
    are void (the batch's deadline) or undone (carried by the next batch), never counted."""
    setup = rig(consistency, "fail_closed")

    def freeze() -> float:
        setup.redis.pause()
        time.sleep(3.0)
        setup.redis.resume()
        return time.monotonic()

    result, back_at = run(setup, freeze)
    assert result.summary().statuses.get(503, 0) > 0, "the freeze was not felt"
    setup.check(result, back_at)


@pytest.mark.parametrize("consistency", MODES)
def test_redis_killed_and_restarted(rig: Callable[[str, str], Rig], consistency: str) -> None:
    """kill -9, down for a second, restarted from its AOF: stale pooled connections are retried."""
    setup = rig(consistency, "fail_closed")

    def crash() -> float:
        setup.redis.kill()
        time.sleep(1.0)
        setup.redis.restart()
        return time.monotonic()

    result, back_at = run(setup, crash)
    setup.check(result, back_at)


@pytest.mark.parametrize("consistency", MODES)
def test_replies_dropped(rig: Callable[[str, str], Rig], consistency: str) -> None:
    """The commands run, their replies never arrive: retried by id, applied once."""
    setup = rig(consistency, "fail_closed")

    def drop() -> float:
        setup.proxy.drop_replies()
        time.sleep(1.5)
        setup.proxy.heal()
        return time.monotonic()

    result, back_at = run(setup, drop)
    setup.check(result, back_at)


@pytest.mark.parametrize("consistency", MODES)
def test_blackhole_resets_and_slow_replies(rig: Callable[[str, str], Rig], consistency: str) -> None:
    """A network that swallows everything, then resets every connection, then answers late."""
    setup = rig(consistency, "fail_closed")

    def network() -> float:
        setup.proxy.blackhole()
        time.sleep(1.0)
        setup.proxy.heal()
        for _ in range(3):
            time.sleep(0.3)
            setup.proxy.reset_all()
        setup.proxy.delay(TIMEOUT * 1.5)  # replies arrive after the client stopped waiting
        time.sleep(1.0)
        setup.proxy.heal()
        return time.monotonic()

    result, back_at = run(setup, network, seconds=7.0)
    setup.check(result, back_at)


@pytest.mark.parametrize("consistency", MODES)
def test_fail_open_counts_what_it_serves_while_redis_is_away(rig: Callable[[str, str], Rig], consistency: str) -> None:
    """Served while Redis is frozen, then killed: every request is a 200 and every one is counted."""
    setup = rig(consistency, "fail_open")

    def outage() -> float:
        setup.redis.pause()
        time.sleep(2.0)
        setup.redis.kill()  # a SIGKILL'd paused process dies; restart from the AOF
        time.sleep(0.5)
        setup.redis.restart()
        return time.monotonic()

    result, back_at = run(setup, outage)
    statuses = result.summary().statuses
    assert set(statuses) == {200}, f"fail_open answered something else than 200: {statuses}"
    setup.check(result, back_at)


def test_no_503_from_stale_connections_after_a_restart(rig: Callable[[str, str], Rig]) -> None:
    """An idle gateway's pooled connections all died with Redis: the first request on each is
    retried on a new connection, never answered 503 once Redis answers again."""
    setup = rig("exact", "fail_closed")
    with BackgroundLoad(setup.gateway.port, setup.clients, PATH, connections=8, requests=80) as load:
        pass
    warm = load.result()
    setup.redis.kill()
    setup.redis.restart()
    time.sleep(1.0)
    with BackgroundLoad(setup.gateway.port, setup.clients, PATH, connections=8, requests=160) as load:
        pass
    after = load.result()
    assert after.summary().statuses == {200: 160}
    setup.gateway.stop()
    for customer, _ in setup.clients:
        calls = setup.usage(customer)["calls"]["used"]  # type: ignore[index]
        served = warm.summary().customers[customer].served + after.summary().customers[customer].served
        assert calls == served
