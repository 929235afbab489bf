"""What the fast path asks of Redis, per customer and second, at a steady request rate.

``python -m benchmarks.fast_calls [--rate 2300] [--seconds 8]`` drives the mg-fast arm in
process at a fixed rate over all its keys (the HTTP harness's rate by default: 200 customers
at ~11.5 requests a second each) and counts the fast path's calls to the store by kind: lease
requests (asked by a request or, at the turn, ahead of one), admissions without a lease, and
flushes, split into those that rode with a lease request in the same tick and those sent on
their own. Each store call of a customer is a group in a script call, so this is what Redis
pays per second for each customer (docs/benchmarks.md). Needs a Redis (MG_BENCH_REDIS,
default redis://127.0.0.1:6379/0), where the run writes under a prefix of its own and deletes
those keys at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter
from typing import Any

from ._common import delete_prefix, new_prefix, redis_client, redis_url
from .arms import PATH, build
from .inprocess import _headers


async def _paced(app: Any, keys: list[str], rate: float, seconds: float) -> tuple[int, float]:
    headers = [_headers(key) for key in keys]
    numbers = itertools.count()
    started = time.perf_counter()
    done = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def worker() -> None:
        nonlocal done
        while True:
            n = next(numbers)
            due = started + n / rate
            if due - started > seconds:
                return
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                "scheme": "http", "path": PATH, "raw_path": PATH.encode(), "query_string": b"",
                "root_path": "", "headers": headers[n % len(headers)], "client": ("127.0.0.1", 40000),
                "server": ("127.0.0.1", 8000), "state": {},
            }  # fmt: skip
            await app(scope, receive, send)
            done += 1

    await asyncio.gather(*(worker() for _ in range(32)))
    return done, time.perf_counter() - started


async def _run(rate: float, seconds: float) -> None:
    prefix = new_prefix()
    arm = await build("mg-fast", redis_url=redis_url(), prefix=prefix, keys=400)
    fast = arm.app.engine.fast_path
    store = fast._store
    counts: Counter[str] = Counter()
    riding: set[object] = set()  # flushes handed over in the tick of a lease request
    admit, flush, flush_now = store.admit, store.flush, fast.usage.hand_over

    async def counted_admit(request: Any) -> Any:
        counts["lease requests" if request.lease else "admissions without a lease"] += 1
        return await admit(request)

    async def counted_flush(usage: Any) -> None:
        counts["flushes riding with a lease request" if riding else "flushes on their own"] += 1
        await flush(usage)

    def counted_flush_now(key: Any) -> None:
        riding.add(key)  # hand_over starts the store's flush as a task: counted when it runs
        asyncio.get_running_loop().call_soon(riding.discard, key)
        flush_now(key)

    store.admit, store.flush, fast.usage.hand_over = counted_admit, counted_flush, counted_flush_now
    try:
        await _paced(arm.app, arm.keys, rate, 2.0)  # warm-up: every customer has a lease and a rate
        counts.clear()
        done, elapsed = await _paced(arm.app, arm.keys, rate, seconds)
    finally:
        await arm.aclose()
        delete_prefix(redis_client(), prefix)  # this run's keys only
    customers = max(1, len(arm.keys) // 2)  # benchmarks.arms.provision: two keys per customer
    print(f"mg-fast: {done} requests in {elapsed:.1f} s ({done / elapsed:.0f}/s), {customers} customers")
    counts["store calls (groups)"] = sum(
        counts[kind] for kind in ("lease requests", "admissions without a lease", "flushes on their own")
    )
    for kind, count in sorted(counts.items()):
        per_second = count / elapsed / customers
        print(f"  {kind:40s} {per_second:6.2f} per customer and second  {count / done:.4f} per request")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fast_calls", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=2300.0, help="requests per second (default 2300)")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(_run(args.rate, args.seconds))


if __name__ == "__main__":
    main()
