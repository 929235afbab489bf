"""Harness 1: a raw ASGI loop, no HTTP. 32 tasks on uvloop drive each arm's app directly.

Reports microseconds per request (wall time of a batch / requests in it, 32 in flight) and the
overhead over ``bare``. Arms are interleaved: every round runs every arm once, in alternating
order, and the figure is the median over rounds (the overhead is the median of the per-round
differences to that round's ``bare``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from . import _count
from ._common import CONCURRENCY, delete_prefix, env_int, new_prefix, redis_client, redis_url, selected_arms
from .arms import HTTP_ONLY, KEY_HEADER, PATH, BuiltArm, build

_RECEIVE_MESSAGE = {"type": "http.request", "body": b"", "more_body": False}


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    import uvloop

    return uvloop.new_event_loop


def _headers(key: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"meterguard-bench"),
        (b"accept", b"*/*"),
        (KEY_HEADER.encode(), key.encode()),
    ]


async def drive(arm: BuiltArm, requests: int, concurrency: int = CONCURRENCY) -> tuple[float, dict[int, int]]:
    """Send ``requests`` GETs through ``arm.app``, ``concurrency`` at a time; (seconds, statuses seen)."""
    app = arm.app
    headers = [_headers(key) for key in arm.keys]
    statuses: dict[int, int] = {}
    per_task = max(1, requests // concurrency)

    async def receive() -> dict[str, Any]:
        return _RECEIVE_MESSAGE

    async def worker(index: int) -> None:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        for n in range(per_task):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.4"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": PATH,
                "raw_path": PATH.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": headers[(index + n * concurrency) % len(headers)],
                "client": ("127.0.0.1", 40000 + index),
                "server": ("127.0.0.1", 8000),
                "state": {},
            }
            await app(scope, receive, send)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return time.perf_counter() - started, statuses


async def _run(arms: list[str], rounds: int, requests: int, keys: int, prefix: str) -> dict[str, Any]:
    built: dict[str, BuiltArm] = {}
    errors: dict[str, str] = {}
    for name in arms:
        try:
            built[name] = await build(name, redis_url=redis_url(), prefix=f"{prefix}-ip", keys=keys)
            await drive(built[name], min(requests, 2000))  # warm-up: connections, scripts, caches
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"  in-process {name}: failed: {errors[name]}", file=sys.stderr)
            built.pop(name, None)
    samples: dict[str, list[float]] = {name: [] for name in built}
    commands: dict[str, list[float]] = {name: [] for name in built}
    by_command: dict[str, dict[str, int]] = {name: {} for name in built}
    served: dict[str, int] = dict.fromkeys(built, 0)
    refused: dict[str, int] = dict.fromkeys(built, 0)
    try:
        for round_no in range(rounds):
            order = list(built) if round_no % 2 == 0 else list(reversed(built))
            for name in order:
                gc.collect()
                before = _count.sent()
                try:
                    seconds, statuses = await drive(built[name], requests)
                except Exception as exc:
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    continue
                done = sum(statuses.values())
                refused[name] += done - statuses.get(200, 0)
                samples[name].append(seconds / done * 1e6)
                sent = _count.since(before)
                commands[name].append(sum(sent.values()) / done)
                served[name] += done
                for command, count in sent.items():
                    by_command[name][command] = by_command[name].get(command, 0) + count
            line = "  ".join(f"{n} {samples[n][-1]:.1f}" for n in built if samples[n])
            print(f"  in-process round {round_no + 1}/{rounds} (us/request): {line}", file=sys.stderr)
    finally:
        for arm in built.values():
            await arm.aclose()
    results: dict[str, Any] = {}
    bare = samples.get("bare", [])
    for name in arms:
        if name in errors or not samples.get(name):
            results[name] = {"error": errors.get(name, "no sample")}
            continue
        mine = samples[name]
        paired = [a - b for a, b in zip(mine, bare, strict=False)]
        results[name] = {
            "us": statistics.median(mine),
            "overhead_us": statistics.median(paired) if paired else None,
            "rounds_us": mine,
            "cmds_per_req": statistics.median(commands[name]),
            "sent": {command: count / served[name] for command, count in sorted(by_command[name].items())},
            "non_200": refused[name],
        }
    return {"rounds": rounds, "requests": requests, "concurrency": CONCURRENCY, "keys": keys, "arms": results}


def run(arms: list[str] | None = None) -> dict[str, Any]:
    """Run the in-process harness over ``arms`` (default: MG_BENCH_ARMS or all but mg-serve)."""
    logging.getLogger("meterguard").setLevel(logging.ERROR)  # the Redis AOF warning, once per arm
    _count.install()
    arms = [arm for arm in arms or selected_arms() if arm not in HTTP_ONLY]
    rounds = env_int("MG_BENCH_INPROC_ROUNDS", 7)
    requests = env_int("MG_BENCH_INPROC_REQUESTS", 6400)
    keys = env_int("MG_BENCH_KEYS", 400)
    prefix = new_prefix()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_run(arms, rounds, requests, keys, prefix))
    finally:
        client = redis_client()
        deleted = delete_prefix(client, prefix)
        client.close()
        print(f"  in-process: deleted {deleted} Redis keys under {prefix}*", file=sys.stderr)


def profile(arm: str, *, requests: int, top: int, use_cprofile: bool, tree: bool) -> None:
    """Run arm ``arm`` in the in-process loop under pyinstrument (or cProfile); print the top functions."""
    logging.getLogger("meterguard").setLevel(logging.ERROR)
    keys = env_int("MG_BENCH_KEYS", 400)
    prefix = new_prefix()

    async def main() -> None:
        built = await build(arm, redis_url=redis_url(), prefix=prefix, keys=keys)
        try:
            await drive(built, min(requests, 2000))
            if use_cprofile:
                import cProfile
                import pstats

                profiler = cProfile.Profile()
                profiler.enable()
                seconds, statuses = await drive(built, requests)
                profiler.disable()
                _summary(arm, seconds, statuses)
                stats = pstats.Stats(profiler, stream=sys.stdout)
                stats.sort_stats("tottime").print_stats(top)
                stats.sort_stats("cumulative").print_stats(top)
            else:
                from pyinstrument import Profiler

                sampler = Profiler(interval=0.0005, async_mode="disabled")
                sampler.start()
                seconds, statuses = await drive(built, requests)
                sampler.stop()
                _summary(arm, seconds, statuses)
                _print_top(sampler, top)
                if tree:
                    print(sampler.output_text(unicode=True, color=False, show_all=False))
        finally:
            await built.aclose()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    finally:
        client = redis_client()
        delete_prefix(client, prefix)
        client.close()


def _summary(arm: str, seconds: float, statuses: dict[int, int]) -> None:
    done = sum(statuses.values())
    print(f"{arm}: {done} requests in {seconds:.3f} s under the profiler ({seconds / done * 1e6:.1f} us/request)")
    print(f"statuses: {statuses}\n")


def _print_top(sampler: Any, top: int) -> None:
    """Self and inclusive time per function, summed over every place it appears in the call tree."""
    root = sampler.last_session.root_frame()
    if root is None:
        print("no samples")
        return
    total = root.time or 1.0
    own: dict[tuple[str, str], float] = {}
    inclusive: dict[tuple[str, str], float] = {}

    def walk(frame: Any, ancestors: frozenset[tuple[str, str]]) -> None:
        ident = (frame.function or "?", f"{frame.file_path_short or '?'}:{frame.line_no or 0}")
        own[ident] = own.get(ident, 0.0) + frame.total_self_time
        if ident not in ancestors:  # recursion and re-entry counted once
            inclusive[ident] = inclusive.get(ident, 0.0) + frame.time
        for child in frame.children:
            if not child.is_synthetic:  # "[self]"/"[await]" leaves: already in the parent's total_self_time
                walk(child, ancestors | {ident})

    walk(root, frozenset())
    for title, table in (("self time", own), ("inclusive time", inclusive)):
        print(f"top {top} functions by {title} (share of {total:.3f} s sampled)")
        for (function, where), seconds in sorted(table.items(), key=lambda item: -item[1])[:top]:
            print(f"  {100 * seconds / total:5.1f}%  {function:<40} {where}")
        print()
