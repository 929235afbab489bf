"""Machine instructions per request of one arm, in the in-process loop, under callgrind.

``python -m benchmarks.instructions ARM [REQUESTS]`` runs the arm twice under
``valgrind --tool=callgrind``: once with a warm-up only, once with the warm-up and REQUESTS
more, and prints the difference divided by REQUESTS. Unlike a timing, the figure repeats to
about 1% on a busy machine, so an ablation (a component commented out) shows its share; about
1k instructions is 0.17 µs of gateway CPU in context (docs/benchmarks.md).

Only the memory arms mean much here: under callgrind a process runs ~50x slower, so the fast
path's leases (sized by time) and exact mode's batches (sized by arrivals per round trip) do not
behave as they do at full speed. Needs valgrind (Debian's package) and a Redis for the Redis arms
(MG_BENCH_REDIS, default redis://127.0.0.1:6379/0), where the run writes under a prefix of its own
and deletes those keys at the end.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import tempfile

from ._common import delete_prefix, new_prefix, redis_client, redis_url
from .arms import IN_PROCESS_ARMS, build
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


def _collected(arm: str, requests: int, prefix: str) -> int:
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir}/out", sys.executable,
             "-m", "benchmarks.instructions", "--drive", arm, str(requests), prefix],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total:\n{result.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--drive"]:  # the process callgrind runs
        import uvloop

        uvloop.install()
        asyncio.run(_drive(argv[1], int(argv[2]), argv[3]))
        return 0
    if not argv or argv[0] not in IN_PROCESS_ARMS:
        raise SystemExit(f"usage: python -m benchmarks.instructions ARM [REQUESTS]; arms: {', '.join(IN_PROCESS_ARMS)}")
    arm, requests = argv[0], int(argv[1]) if len(argv) > 1 else 2000
    prefix = new_prefix()
    try:
        per_request = (_collected(arm, requests, prefix + "-n") - _collected(arm, 0, prefix + "-0")) / requests
    finally:
        if arm not in ("bare", "noop", "mg-memory"):  # the others wrote keys to MG_BENCH_REDIS: this run's only
            delete_prefix(redis_client(), prefix)
    print(f"{arm}: {per_request / 1000:.1f}k instructions per request (in-process, {requests} requests)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
