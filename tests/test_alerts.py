"""Threshold alerts: which thresholds fire, once per period across racing processes, signed
webhooks delivered to a real local receiver, retried after failures, and surviving a restart.

The receiver is an asyncio HTTP server on 127.0.0.1 speaking h11; the stores are the memory store
and real Redis / Redis Cluster (each test under its own key prefix).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import h11
import pytest

from meterguard.alerts import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    Alerts,
    Deliverer,
    crossed,
    event_id,
    sign,
    verify,
)
from meterguard.config import Config, parse_config
from meterguard.errors import ConfigError
from meterguard.periods import period_named
from meterguard.store.base import AlertQueue, Usage
from meterguard.store.cluster import RedisClusterStore
from meterguard.store.memory import MemoryStore
from meterguard.store.redis import RedisStore

from .conftest import CLUSTER_URL, REDIS_URL, drop_keys

SECRET = b"whsec_test_secret"

PLANS = """\
version: 1
webhooks: {url: "http://127.0.0.1:9/hook", secret_env: MG_TEST_WEBHOOK_SECRET, timeout_seconds: 2}
plans:
  pro:
    price: "5000.00"
    quotas: {calls: 1000, records: 1000000}
    overage:
      records: {unit: 1000, price: "5.00"}
      spend_cap: "2500.00"
    alerts: [0.8, 1.0]
  free:
    quotas: {calls: 100}
    alerts: [0.5]
"""


StoreMaker = Callable[[], AlertQueue]


@pytest.fixture(params=["memory", "redis", "cluster"])
async def make_store(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[StoreMaker]:
    """``make_store()``: a store instance on shared state (a new connection for Redis kinds,
    the same object for memory, which lives in one process)."""
    kind = request.param
    memory = MemoryStore()
    made: list[RedisStore] = []

    def make() -> AlertQueue:
        if kind == "memory":
            return memory
        store: RedisStore
        if kind == "redis":
            store = RedisStore(REDIS_URL, key_prefix=key_prefix)
        else:
            store = RedisClusterStore(CLUSTER_URL, key_prefix=key_prefix)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()
    if kind != "memory":
        await drop_keys(REDIS_URL if kind == "redis" else CLUSTER_URL, key_prefix)


def config(url: str = "http://127.0.0.1:9/hook") -> Config:
    return parse_config(PLANS.replace("http://127.0.0.1:9/hook", url))


# ------------------------------------------------------------------------------------------------
# a real webhook receiver
# ------------------------------------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    statuses: list[int] = field(default_factory=list)  # answers to give, in order; then 200
    received: list[Received] = field(default_factory=list)
    url: str = ""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(our_role=h11.SERVER)
        headers: dict[str, str] = {}
        body = b""
        try:
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    headers = {name.decode().lower(): value.decode() for name, value in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    return
            status = self.statuses.pop(0) if self.statuses else 200
            self.received.append(Received(headers, body))
            self.arrived.set()
            reply = connection.send(h11.Response(status_code=status, headers=[("content-length", "2")]))
            reply += connection.send(h11.Data(data=b"ok")) + connection.send(h11.EndOfMessage())
            writer.write(reply)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    made = Receiver()
    server = await asyncio.start_server(made.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    made.url = f"http://127.0.0.1:{port}/hooks/meterguard"
    async with server:
        yield made
        server.close()


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------------
# what crosses
# ------------------------------------------------------------------------------------------------


def test_crossed_is_exact_per_meter_and_threshold() -> None:
    found = crossed([0.8, 1.0], calls=799, records=800_000, calls_limit=1000, records_limit=1_000_000)
    assert [(c.meter, c.threshold) for c in found] == [("records", 0.8)]
    found = crossed([0.8, 1.0], calls=1000, records=0, calls_limit=1000, records_limit=None)
    assert [c.name for c in found] == ["calls:0.8", "calls:1"]
    found = crossed(
        [0.8], calls=0, records=0, calls_limit=0, records_limit=None, spend_cents=200_000, cap_cents=250_000
    )
    assert [(c.meter, c.used, c.limit) for c in found] == [("spend", 200_000, 250_000)]
    assert crossed([0.8], calls=5, records=5, calls_limit=None, records_limit=0) == []


def test_signatures_verify_and_refuse_tampering_and_replays() -> None:
    body = b'{"id":"alrt_1"}'
    header = sign(SECRET, 1_800_000_000, body)
    assert header.startswith("t=1800000000,v1=")
    assert verify(SECRET, header, body, now=1_800_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_800_000_100)
    assert not verify(b"other", header, body, now=1_800_000_100)
    assert not verify(SECRET, header, body, now=1_800_000_000 + 301)  # too old: a replay
    assert not verify(SECRET, "v1=abc", body)


def test_webhook_config_is_validated_and_the_secret_read_from_the_environment() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(PLANS.replace('url: "http://127.0.0.1:9/hook", ', 'url: "http://x/", url_env: HOOK, '))
    assert "<config>:2: webhooks: set exactly one of url or url_env" in str(caught.value)
    settings = config().webhooks
    assert settings is not None
    assert settings.resolve({"MG_TEST_WEBHOOK_SECRET": "s"}) == ("http://127.0.0.1:9/hook", b"s")
    with pytest.raises(ConfigError, match="MG_TEST_WEBHOOK_SECRET is not set"):
        settings.resolve({})
    assert "s3cret" not in repr(Deliverer(MemoryStore(), "http://x/", b"s3cret"))


# ------------------------------------------------------------------------------------------------
# firing once
# ------------------------------------------------------------------------------------------------


async def test_each_threshold_fires_once_per_period_even_with_racing_processes(
    make_store: StoreMaker, unique_customer: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """Eight "processes" (own store instance and connection, own Alerts) check the same usage at once."""
    cfg = config()
    customer = unique_customer("acme")
    period = period_named("2026-11")
    processes = [Alerts(cfg, make_store()) for _ in range(8)]
    caplog.set_level("WARNING", logger="meterguard.alerts")

    usage = Usage(calls=850, records=1_000_000)  # calls past 0.8, records past 0.8 and 1.0
    results = await asyncio.gather(*(alerts.check(customer, "pro", period, usage) for alerts in processes))
    fired = sorted(c.name for result in results for c in result)
    assert fired == ["calls:0.8", "records:0.8", "records:1"]
    assert sum("reached" in record.message for record in caplog.records) == 3

    # more usage: only the new threshold fires; new processes (empty caches) fire nothing again
    later = [Alerts(cfg, make_store()) for _ in range(4)]
    usage = Usage(calls=1000, records=1_500_000)  # spend: 500 x 5.00 = 2500.00 = the cap
    results = await asyncio.gather(*(alerts.check(customer, "pro", period, usage) for alerts in later + processes))
    assert sorted(c.name for result in results for c in result) == ["calls:1", "spend:0.8", "spend:1"]

    # a new period starts over
    december = period_named("2026-12")
    results = await asyncio.gather(*(alerts.check(customer, "pro", december, usage) for alerts in processes))
    assert len([c for result in results for c in result]) == 6

    # a customer cap of its own changes the spend limit
    other = unique_customer("capped")
    fired_caps = await processes[0].check(other, "pro", period, Usage(0, 1_100_000), spend_cap_cents=50_000)
    assert [c.name for c in fired_caps] == ["records:0.8", "records:1", "spend:0.8", "spend:1"]


async def test_deliveries_are_signed_retried_after_a_500_and_survive_a_restart(
    make_store: StoreMaker, receiver: Receiver, unique_customer: Callable[[str], str]
) -> None:
    cfg = config(receiver.url)
    customer = unique_customer("acme")
    period = period_named("2026-11")
    store = make_store()
    await Alerts(cfg, store).check(customer, "free", period, Usage(calls=60))

    receiver.statuses = [500]
    first = Deliverer(store, receiver.url, SECRET, backoff_base=0.2)
    assert first.backoff(1) == 0.2 and first.backoff(3) == 0.8
    assert await first.deliver_due() == 0  # the receiver answered 500
    assert len(receiver.received) == 1
    assert await first.deliver_due() == 0  # not due again before its backoff
    await first.aclose()  # the gateway stops

    restarted = Deliverer(make_store(), receiver.url, SECRET, poll_seconds=0.02)  # a new process, same store
    restarted.start()
    try:
        await wait_for(lambda: len(receiver.received) == 2)
        await asyncio.sleep(0.3)
        assert len(receiver.received) == 2  # delivered, then never again
    finally:
        await restarted.aclose()

    retried = receiver.received[1]
    assert verify(SECRET, retried.headers[SIGNATURE_HEADER.lower()], retried.body)
    body = json.loads(retried.body)
    assert retried.headers[EVENT_ID_HEADER.lower()] == body["id"] == event_id(customer, "2026-11", "calls:0.5")
    assert retried.headers["content-type"] == "application/json"
    assert body == {
        "id": body["id"],
        "type": "quota.threshold",
        "customer": customer,
        "plan": "free",
        "period": "2026-11",
        "meter": "calls",
        "threshold": 0.5,
        "used": 60,
        "limit": 100,
        "at": body["at"],
    }
    assert receiver.received[0].body == retried.body  # the same event, re-signed


async def test_spend_alert_body_carries_amounts_as_strings(
    make_store: StoreMaker, receiver: Receiver, unique_customer: Callable[[str], str]
) -> None:
    cfg = config(receiver.url)
    customer = unique_customer("acme")
    store = make_store()
    await Alerts(cfg, store).check(customer, "pro", period_named("2026-11"), Usage(0, 1_300_000))
    assert (
        await Deliverer(store, receiver.url, SECRET).deliver_due() == 2
    )  # records 0.8 + 1.0; spend 1500.00 is under 0.8 of the cap
    fired = await Alerts(cfg, store).check(customer, "pro", period_named("2026-11"), Usage(0, 1_450_000))
    assert [c.name for c in fired] == ["spend:0.8"]  # 450 x 5.00 = 2250.00 >= 0.8 x 2500.00
    assert await Deliverer(store, receiver.url, SECRET).deliver_due() == 1
    body = json.loads(receiver.received[-1].body)
    assert (body["type"], body["meter"], body["used"], body["limit"]) == (
        "spend.threshold",
        "spend",
        "2250.00",
        "2500.00",
    )


async def test_a_delivery_is_given_up_after_a_day_with_an_error_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, unique_customer: Callable[[str], str]
) -> None:
    now = [1_800_000_000.0]
    store = MemoryStore()
    customer = unique_customer("acme")
    await Alerts(config(receiver.url), store, clock=lambda: now[0]).check(
        customer, "free", period_named("2026-11"), Usage(calls=100)
    )
    receiver.statuses = [503, 503]
    deliverer = Deliverer(store, receiver.url, SECRET, clock=lambda: now[0])
    assert await deliverer.deliver_due() == 0
    now[0] += 86_400 + 1
    with caplog.at_level("ERROR", logger="meterguard.alerts"):
        assert await deliverer.deliver_due() == 0
    assert "giving up after 2 attempts" in caplog.text
    now[0] += 3600
    assert await store.due_deliveries(now[0], 10, 60) == []


async def test_an_unreachable_receiver_is_retried_with_backoff(unique_customer: Callable[[str], str]) -> None:
    now = [1_800_000_000.0]
    store = MemoryStore()
    await Alerts(config(), store, clock=lambda: now[0]).check(
        unique_customer("acme"), "free", period_named("2026-11"), Usage(calls=50)
    )
    # port 9 (discard) on loopback refuses the connection
    deliverer = Deliverer(store, "http://127.0.0.1:9/hook", SECRET, clock=lambda: now[0], timeout=1)
    delays = []
    for _ in range(12):
        assert await deliverer.deliver_due() == 0
        (due,) = store._deliveries.values()
        delays.append(due[1] - now[0])
        now[0] = due[1]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0] and delays[-1] == 600.0
