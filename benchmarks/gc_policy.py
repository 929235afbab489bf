"""What the garbage collector costs an arm, with CPython's settings and with meterguard's.

``python -m benchmarks.gc_policy [ARM ...] [--rounds 8] [--requests 6400]`` drives each arm
(default: mg-exact, mg-fast, mg-memory) in process, 32 requests in flight, in one process whose
collector is switched between rounds: ``default`` (CPython's threshold of 700, nothing frozen)
and ``tuned`` (what meterguard/_gc.py sets once the app has started: startup frozen, young
threshold 10,000). Rounds alternate the order. Per arm and setting it prints the median process
CPU per request and the collector's own time per request (``gc.callbacks``). One process and
alternating rounds, because this machine's speed drifts between runs by more than the effect.
Needs a Redis for the Redis arms (MG_BENCH_REDIS, default redis://127.0.0.1:6379/0), where the
run writes under a prefix of its own and deletes those keys at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from typing import Any

from meterguard import _gc

from ._common import delete_prefix, new_prefix, redis_client, redis_url
from .arms import build
from .inprocess import drive

# CPython's settings: the older generations' thresholds as this interpreter started with them
DEFAULT_THRESHOLD = (_gc.CPYTHON_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


class _CollectorClock:
    """Seconds spent in the collector, from gc.callbacks."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


def _use(setting: str) -> None:
    gc.unfreeze()
    gc.set_threshold(*DEFAULT_THRESHOLD)
    if setting == "tuned":
        _gc.apply_serving_settings()  # what the middleware applies once the app has started


async def _arm(name: str, url: str, rounds: int, requests: int) -> None:
    prefix = new_prefix()
    built = await build(name, redis_url=url, prefix=prefix, keys=400)
    clock = _CollectorClock()
    figures: dict[str, list[tuple[float, float]]] = {"default": [], "tuned": []}
    try:
        await drive(built, 2000)  # warm-up; its first request starts the gateway (and tunes, undone below)
        gc.callbacks.append(clock)
        for number in range(rounds):
            order = ["default", "tuned"] if number % 2 == 0 else ["tuned", "default"]
            for setting in order:
                _use(setting)
                clock.seconds = 0.0
                started = time.process_time()
                await drive(built, requests)
                cpu = time.process_time() - started
                figures[setting].append((cpu / requests * 1e6, clock.seconds / requests * 1e6))
    finally:
        if clock in gc.callbacks:
            gc.callbacks.remove(clock)
        _use("tuned")
        await built.aclose()
        if name != "mg-memory":
            delete_prefix(redis_client(), prefix)  # this run's keys only
    for setting, rows in figures.items():
        cpu = statistics.median(row[0] for row in rows)
        collector = statistics.median(row[1] for row in rows)
        spread = ", ".join(f"{row[0]:.0f}" for row in rows)
        print(f"{name:10s} {setting:8s} {cpu:7.1f} µs CPU per request, {collector:6.2f} in the collector  ({spread})")


async def _run(arms: list[str], rounds: int, requests: int) -> None:
    for name in arms:
        await _arm(name, redis_url(), rounds, requests)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gc_policy", description=__doc__.split("\n\n")[0])
    parser.add_argument("arms", nargs="*", default=["mg-exact", "mg-fast", "mg-memory"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--requests", type=int, default=6400, help="requests per round and setting")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    asyncio.run(_run(args.arms, args.rounds, args.requests))


if __name__ == "__main__":
    main()
