"""A separate process that fires waves of concurrent admits; driven by test_concurrency.py.

Usage: python _admit_worker.py URL PREFIX CUSTOMER QUOTA CONCURRENCY [broken]
Prints "ready" once its connections are open, then for each "go" line on stdin runs one wave
of CONCURRENCY simultaneous admits and prints "done <admitted>". Exits at end of input.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace

from meterguard.store.base import AdmitRequest, Decision, Meter
from meterguard.store.cluster import RedisClusterStore
from meterguard.store.redis import RedisStore


class ReadThenIncrement(RedisStore):
    """A deliberately broken admission: read the count, then increment in a second step."""

    async def admit(self, request: AdmitRequest) -> Decision:
        used = (await self.usage(request.customer, request.period_id)).calls
        assert request.calls.included is not None
        if used + request.weight > request.calls.included:
            return Decision(False, "quota", ("calls-period",), 0.0, (), used, 0, 0, 0.0)
        return await super().admit(replace(request, calls=Meter(None)))


async def main(url: str, prefix: str, customer: str, quota: int, concurrency: int, broken: bool) -> None:
    if url.startswith("redis+cluster://"):
        store: RedisStore = RedisClusterStore(url, key_prefix=prefix)
    else:
        store = (ReadThenIncrement if broken else RedisStore)(url, key_prefix=prefix)
    request = AdmitRequest(
        customer=customer,
        key_id="kid1",
        route="GET /v1/posts/search",
        listed=True,
        weight=1,
        windows=(),
        strategy="sliding",
        period_id="2026-11",
        period_end=int(time.time()) + 86_400,
        calls=Meter(quota),
        records=Meter(None),
        spend_cap_cents=None,
        day="2026-11-29",
    )
    try:
        # Open the connections first, so that a wave really goes out at once.
        await asyncio.gather(*(store.ping() for _ in range(concurrency)))
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
            decisions = await asyncio.gather(*(store.admit(request) for _ in range(concurrency)))
            print(f"done {sum(decision.admitted for decision in decisions)}", flush=True)
    finally:
        await store.aclose()


if __name__ == "__main__":
    url, prefix, customer, quota, concurrency = sys.argv[1:6]
    asyncio.run(main(url, prefix, customer, int(quota), int(concurrency), sys.argv[6:] == ["broken"]))
