"""A flood of forged, well-formed API keys at 400 connections: honest customers keep their 200s,
and Redis sees at most one read per distinct forged key.

Keys carry a public checksum, so anyone can mint well-formed keys offline; each costs a store
lookup the first time. Before ledger v2 every uncached lookup took a pooled connection of its
own and identical lookups were not merged: redis-py's pool ran out ("Too many connections"),
every customer got 503s under fail_closed (and under fail_open the forged requests were
served). The failed-authentication throttle (auth.failed_limit) is turned off here: this is
the store's own defence, for floods spread over many addresses.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from meterguard.keys import generate_key, hash_key

from .load import BackgroundLoad, drive
from .servers import RedisServer
from .wave import Gateway

FORGED = 3000
PLANS = """
version: 1
auth:
  failed_limit: null
routes:
  - {{match: "GET /health", public: true}}
plans:
  data:
    rate_limits: ["100000/minute"]
customers:
  victim: {{plan: data, keys: ["{victim}"]}}
"""


def test_a_forged_key_flood_leaves_honest_customers_served(private_redis: RedisServer, tmp_path: Path) -> None:
    victim = generate_key()
    config = tmp_path / "plans.yaml"
    config.write_text(PLANS.format(victim=hash_key(victim)))
    store = f"{private_redis.url}?prefix=flood"
    with Gateway("tests.support:data_app", config, store, workers=1, log=tmp_path / "gateway.log") as gateway:
        forged = [("forged", generate_key()) for _ in range(FORGED)]
        client = private_redis.client()
        client.config_resetstat()
        victims = [("victim", victim)]
        with BackgroundLoad(gateway.port, victims, "/v1/posts/1?n=1", connections=4, seconds=8, rate=40) as honest:
            time.sleep(0.5)
            flood = asyncio.run(drive(gateway.port, forged, "/v1/posts/1", connections=400, requests=2 * FORGED))
        served = honest.result().summary()
        reads = int(client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))
    assert flood.summary().statuses.get(401, 0) >= FORGED, flood.summary().statuses
    assert flood.summary().statuses.get(200, 0) == 0
    assert set(served.statuses) == {200}, f"an honest customer was refused during the flood: {served.statuses}"
    assert served.customers["victim"].served >= 200
    # One read per distinct forged key (their second use is answered from the negative cache),
    # and a handful for the victim's own lookups.
    assert reads <= FORGED + 10, f"{reads} HGETALL for {FORGED} distinct forged keys"
