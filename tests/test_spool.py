"""The ledger on disk (spool.path): usage that waits for Redis survives the gateway's restart.

A gateway under fail_open serves while Redis is unreachable; the usage it could not send is
written to its spool. Stopped (SIGTERM, or SIGKILL) before Redis comes back, it leaves the file
behind; the next gateway adopts it and replays it by id once Redis answers: served = usage.
Without spool.path the same run loses what was served during the outage (checked below, so the
test can fail).
"""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from meterguard.cli import main
from meterguard.keys import generate_key, hash_key
from meterguard.plans import Window
from meterguard.store._ledger import Admission, Carry, Usage
from meterguard.store._spool import Spool, Spooled, decode, encode
from meterguard.store.base import Meter

from .faultproxy import FaultProxy
from .load import BackgroundLoad
from .servers import RedisServer
from .store.test_store_behaviour import request
from .wave import Gateway

PLANS = """
version: 1
on_store_error: fail_open
{spool}
routes:
  - {{match: "GET /health", public: true}}
plans:
  data:
    rate_limits: ["100000/minute"]
customers:
  spooled: {{plan: data, keys: ["{key}"]}}
"""


def test_a_spool_file_reads_back_as_it_was_written(tmp_path: Path) -> None:
    usage = Usage(("acme", "2026-11", 1_800_000_000, "2026-11-30"), consumed=2, returned=1, unmetered=3, uncounted=1)
    usage.add_row(("GET /v1/posts", True, "k1"), 2, 30)
    usage.windows[(Window("1m", 10, 60, "1m"), 29_000_000)] = 1
    admission = Admission(request("acme", windows=(Window("1m", 10, 60),), calls=Meter(5, 1, 1000)), True)
    spooled = Spooled("writer-1", 41, [usage], {"acme": [Carry(40, [admission], [usage])]})
    back = decode(encode(spooled))
    assert (back.writer, back.seq) == ("writer-1", 41)
    assert back.usages[0].rows == usage.rows and back.usages[0].windows == usage.windows
    assert (back.usages[0].unmetered, back.usages[0].uncounted) == (3, 1)
    carried = back.carries["acme"][0]
    assert carried.seq == 40 and carried.admissions[0].request == admission.request and carried.admissions[0].served


def test_a_file_held_by_a_live_process_is_not_adopted(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.hold("w1")
    first.write(Spooled("w1", 3, [], {}))
    assert Spool(tmp_path).adopt() is None  # w1 is locked by `first`
    first.release()
    again = Spool(tmp_path)
    adopted = again.adopt()
    again.release()
    assert adopted is not None and adopted.writer == "w1"


def usage_of(config: Path, store: str) -> tuple[int, int]:
    result = CliRunner().invoke(main, ["usage", "spooled", "--json", "--config", str(config), "--store", store])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    return document["calls"]["used"], document["records"]["used"]


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "no-spool"])
def test_usage_served_during_an_outage_survives_a_gateway_restart(
    private_redis: RedisServer,
    fault_proxy: Callable[[int], FaultProxy],
    tmp_path: Path,
    stop: signal.Signals,
    spooled: bool,
) -> None:
    key = generate_key()
    spool_dir = tmp_path / "spool"
    config = tmp_path / "plans.yaml"
    spool = f"spool: {{path: {spool_dir}}}" if spooled else ""
    config.write_text(PLANS.format(spool=spool, key=hash_key(key)))
    proxy = fault_proxy(private_redis.port)
    prefix = f"spool-{uuid.uuid4().hex[:6]}"
    via_proxy = f"{proxy.url}?prefix={prefix}&socket_timeout=0.3"
    direct = f"{private_redis.url}?prefix={prefix}"
    clients = [("spooled", key)]

    first = Gateway("tests.support:data_app", config, via_proxy, workers=1, log=tmp_path / "first.log").start()
    try:
        with BackgroundLoad(first.port, clients, "/v1/posts/1?n=2", connections=4, requests=40) as warm:
            pass
        proxy.blackhole()  # Redis unreachable: served under fail_open, the usage waits
        with BackgroundLoad(first.port, clients, "/v1/posts/1?n=2", connections=4, seconds=2.5, rate=30) as away:
            pass
        time.sleep(0.8)  # the spool is written every 0.5 s while the store fails
        # ... counted from when the ledger sees the failure, which a busy machine delays: wait for
        # the file (what is tested is that a spooled process loses nothing, not how soon it spools).
        deadline = time.monotonic() + 10
        while spooled and not list(spool_dir.glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        first.stop(stop)
    served = warm.result().summary().customers["spooled"]
    during = away.result().summary().customers["spooled"]
    assert during.served > 20, away.result().summary().statuses
    proxy.heal()
    if spooled:
        assert list(spool_dir.glob("*.json")), "nothing was spooled"

    second = Gateway("tests.support:data_app", config, via_proxy, workers=1, log=tmp_path / "second.log").start()
    try:
        deadline = time.monotonic() + (10 if spooled else 2)
        want = (served.served + during.served, served.records + during.records)
        while time.monotonic() < deadline and usage_of(config, direct) != want:
            time.sleep(0.3)
    finally:
        second.stop()
    counted = usage_of(config, direct)
    if spooled:
        assert counted == want, f"served {want}, counted {counted}"
        assert not list(spool_dir.glob("*.json")), "the spool was not removed once replayed"
    else:
        assert counted[0] < want[0], "without a spool, a gateway stopped during the outage loses usage"
