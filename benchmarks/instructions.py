"""Machine instructions per request of one arm, in the in-process loop, under callgrind.

``python -m benchmarks.instructions ARM [REQUESTS]`` runs the arm twice under
``valgrind --tool=callgrind``: once with a warm-up only, once with the warm-up and REQUESTS
more, and prints the difference divided by REQUESTS. Unlike a timing, the figure repeats to
about 1% on a busy machine, so an ablation (a component commented out) shows its share; about
1k instructions is 0.17 µs of gateway CPU in context (docs/benchmarks.md).

``--baseline REV [--pairs N]`` measures the arm on this tree and on REV's meterguard (its
``src/``, extracted as ``MG_BENCH_BASELINE`` does, first on ``PYTHONPATH``), N times each,
alternating, and prints both medians and their difference: a change too small for the HTTP
harness's noise, measured against the code before it.

Only the memory arms mean much here: under callgrind a process runs ~50x slower, so the fast
path's leases (sized by time) and exact mode's batches (sized by arrivals per round trip) do not
behave as they do at full speed. Needs valgrind (Debian's package) and a Redis for the Redis arms
(MG_BENCH_REDIS, default redis://127.0.0.1:6379/0), where the run writes under a prefix of its own
and deletes those keys at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ._common import delete_prefix, new_prefix, redis_client, redis_url
from .arms import IN_PROCESS_ARMS, build
from .http import baseline_source
from .inprocess import drive

WARM_UP = 1000


async def _drive(arm: str, requests: int, prefix: str) -> None:
    built = await build(arm, redis_url=redis_url(), prefix=prefix, keys=400)
    try:
        await drive(built, WARM_UP)
        if requests:
            await drive(built, requests)
    finally:
        await built.aclose()


def driver_env(src: Path | None) -> dict[str, str]:
    """The driven process's environment: with ``src``, that meterguard ahead of the installed one."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def _collected(arm: str, requests: int, prefix: str, src: Path | None = None) -> int:
    env = driver_env(src)
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/out", sys.executable,
             "-m", "benchmarks.instructions", "--drive", arm, str(requests), prefix],
            capture_output=True, text=True, check=True, env=env,
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def per_request(arm: str, requests: int, src: Path | None = None) -> float:
    """Instructions per request: a run with the warm-up and ``requests`` more, less one with the
    warm-up only. The Redis arms' keys (MG_BENCH_REDIS) are this call's own and deleted after."""
    prefix = new_prefix()
    try:
        return (_collected(arm, requests, prefix + "-n", src) - _collected(arm, 0, prefix + "-0", src)) / requests
    finally:
        if arm not in ("bare", "noop", "mg-memory"):
            delete_prefix(redis_client(), prefix)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--drive"]:  # the process callgrind runs
        import uvloop

        uvloop.install()
        asyncio.run(_drive(argv[1], int(argv[2]), argv[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("arm", choices=IN_PROCESS_ARMS)
    parser.add_argument("requests", nargs="?", type=int, default=2000)
    parser.add_argument("--baseline", metavar="REV", help="also measure REV's meterguard, alternating")
    parser.add_argument("--pairs", type=int, default=2, help="runs of each, with --baseline (default 2)")
    args = parser.parse_args(argv)
    arm, requests = args.arm, args.requests
    if args.baseline is None:
        count = per_request(arm, requests)
        print(f"{arm}: {count / 1000:.1f}k instructions per request (in-process, {requests} requests)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        commit, src = baseline_source(args.baseline, Path(tmp))
        current: list[float] = []
        before: list[float] = []
        for _ in range(max(1, args.pairs)):
            current.append(per_request(arm, requests))
            before.append(per_request(arm, requests, src))
    print(f"{arm}: {_listed(current)} instructions per request, {commit}: {_listed(before)} "
          f"(in-process, {requests} requests, alternating)")  # fmt: skip
    now, then = statistics.median(current), statistics.median(before)
    change = f"{(now - then) / 1000:+.1f}k instructions per request ({now / then - 1:+.1%})"
    print(f"{arm} against {arm}@{commit}: {change}, medians")
    return 0


def _listed(runs: list[float]) -> str:
    return " / ".join(f"{run / 1000:.1f}k" for run in runs)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
