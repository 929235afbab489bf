"""Client CPU per script round trip: redis-py against the thin client of the METER call (issue 12).

``python -m benchmarks.client_roundtrip [--calls N] [--concurrency 1,4] [--loop uvloop|asyncio]``

Both clients are driven through the store's own paths on one ``RedisBase``: ``_script`` (redis-py,
what every script but METER uses) and ``_hot_script`` (store/_resp.py), so the figure includes
``translated()`` and everything else a real call pays. Two payloads:

* ``trivial``: ``EVALSHA`` of ``return 1``, no keys, no arguments: the fixed cost of a round trip;
* ``meter``: the KEYS and the JSON argument of a real METER batch of ~8 works, captured from the
  mg-exact arm, sent to a script that answers the reply that batch got. The bytes on the wire are
  a real batch's; Redis does no metering work, which would only add wall time, not client CPU.

Reported: process CPU (user + system, ``time.process_time``) per call over ``--calls`` calls,
``concurrency`` callers at once (each waits for its reply before its next call), and the wall
time per call. Then the effect on a request: the mg-exact arm driven in-process as
benchmarks/inprocess.py does (32 in flight), process CPU per request with the METER call on the
thin client and on redis-py, alternating by round in one process (``--requests``, ``--rounds``).

Redis is another process: its CPU is in neither figure. Runs against its own redis-server unless
MG_BENCH_REDIS names one. Timing on a shared machine is noisy: compare the two clients within
one run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from meterguard.store._redis_client import RedisBase, Script, script

from ._common import delete_prefix, new_prefix, private_redis, redis_client, redis_url
from .arms import build
from .inprocess import drive

WORKS = 8  # decisions per call under the HTTP harness (docs/benchmarks.md)
Call = Callable[[Script, Sequence[str], Sequence[str]], Awaitable[Any]]


def _lua(value: Any) -> str:
    """A reply as a Lua literal (RESP2: integers, strings, nested tables)."""
    if isinstance(value, list):
        return "{" + ", ".join(_lua(item) for item in value) + "}"
    if isinstance(value, int):
        return str(value)
    text = str(value).encode()
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in text) + '"'


async def capture(url: str, prefix: str) -> tuple[list[str], list[str], Any]:
    """KEYS, ARGV and reply of a METER call of ~WORKS works from the mg-exact arm."""
    seen: list[tuple[list[str], list[str], Any]] = []
    original = RedisBase._hot_script

    async def recording(self: RedisBase, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        reply = await original(self, script, keys, args)
        seen.append((list(keys), [str(a) for a in args], reply))
        return reply

    RedisBase._hot_script = recording  # type: ignore[method-assign]
    arm = await build("mg-exact", redis_url=url, prefix=prefix, keys=400)
    try:
        await drive(arm, 2000, concurrency=2 * WORKS)  # admissions and settlements: two batches
    finally:
        RedisBase._hot_script = original  # type: ignore[method-assign]
        await arm.aclose()
    # reply = [sec, usec, one reply per work]
    return min(seen, key=lambda call: (abs(len(call[2]) - 2 - WORKS), -len(call[1][0])))


async def measure(
    call: Call, script: Script, keys: list[str], args: list[str], calls: int, concurrency: int
) -> tuple[float, float]:
    """(CPU µs per call, wall µs per call)."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await call(script, keys, args)

    await asyncio.gather(*(caller(20) for _ in range(concurrency)))  # connect, load the script, warm up
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    done = calls // concurrency * concurrency
    return (time.process_time() - cpu) / done * 1e6, (time.perf_counter() - wall) / done * 1e6


async def run(url: str, calls: int, concurrencies: list[int]) -> None:
    prefix = new_prefix()
    try:
        keys, args, reply = await capture(url, prefix)
    finally:
        delete_prefix(redis_client(), prefix)
    payloads = {
        "trivial": (script("return 1", "trivial"), [], []),
        "meter": (script(f"return {_lua(reply)}", "meter-shaped"), keys, args),
    }
    print(f"meter batch: {len(reply) - 2} works, {len(keys)} keys, {len(args[0])} bytes of JSON")
    print(f"{'payload':<8} {'callers':>7} {'client':<9} {'CPU µs/call':>12} {'wall µs/call':>13}")
    base = RedisBase(url)
    clients: dict[str, Call] = {"redis-py": base._script, "thin": base._hot_script}
    try:
        for name, (lua, payload_keys, payload_args) in payloads.items():
            for concurrency in concurrencies:
                # interleaved, twice: the machine's neighbours move both clients alike
                results: dict[str, list[tuple[float, float]]] = {client: [] for client in clients}
                for _ in range(2):
                    for client, call in clients.items():
                        results[client].append(await measure(call, lua, payload_keys, payload_args, calls, concurrency))
                for client, figures in results.items():
                    cpu = min(f[0] for f in figures)
                    wall = min(f[1] for f in figures)
                    print(f"{name:<8} {concurrency:>7} {client:<9} {cpu:>12.1f} {wall:>13.1f}")
    finally:
        base._closed = True
        await base._close_clients()


async def gateway(url: str, requests: int, rounds: int) -> None:
    """mg-exact in-process (benchmarks/inprocess.py's drive, 32 in flight): process CPU per request
    with the METER call on the thin client and on redis-py, interleaved in one process."""
    prefix = new_prefix()
    original = RedisBase._hot_script
    modes: dict[str, Any] = {"redis-py": RedisBase._script, "thin": original}
    cpu: dict[str, list[float]] = {mode: [] for mode in modes}
    statuses: dict[int, int] = {}
    arm = await build("mg-exact", redis_url=url, prefix=prefix, keys=400)
    try:
        await drive(arm, 2000)  # warm: keys looked up, connections open
        for round_ in range(rounds):
            for mode in modes if round_ % 2 == 0 else reversed(modes):
                RedisBase._hot_script = modes[mode]  # type: ignore[method-assign]
                started = time.process_time()
                _, seen = await drive(arm, requests)
                cpu[mode].append((time.process_time() - started) / sum(seen.values()) * 1e6)
                for status, count in seen.items():
                    statuses[status] = statuses.get(status, 0) + count
    finally:
        RedisBase._hot_script = original  # type: ignore[method-assign]
        await arm.aclose()
        delete_prefix(redis_client(), prefix)
    print(f"\nmg-exact in-process, {requests} requests x {rounds} rounds per client, statuses {statuses}")
    print(f"{'client':<9} {'CPU µs/request (median)':>24}  rounds")
    for mode, figures in cpu.items():
        print(f"{mode:<9} {sorted(figures)[len(figures) // 2]:>24.1f}  {' '.join(f'{f:.0f}' for f in figures)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client_roundtrip", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per measurement")
    parser.add_argument("--concurrency", default="1,4", help="callers at once, comma separated")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="uvicorn's default is uvloop")
    parser.add_argument("--requests", type=int, default=6400, help="mg-exact requests per client and round")
    parser.add_argument("--rounds", type=int, default=4, help="mg-exact rounds (0: skip that part)")
    args = parser.parse_args(argv)
    concurrencies = [int(n) for n in args.concurrency.split(",")]

    async def both() -> None:
        await run(redis_url(), args.calls, concurrencies)
        if args.rounds:
            await gateway(redis_url(), args.requests, args.rounds)

    with private_redis():
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(both())
        else:
            asyncio.run(both())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
