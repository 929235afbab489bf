"""What the Redis server spends per request of the Redis arms: ``python -m benchmarks.redis_cost``.

The HTTP harness reads Redis CPU over 10 s of wrk on a CPU shared with wrk and the gateway, so
its per-request figure moves by a third between runs. This drives the arms in-process (the
in-process harness's ``drive``) against a redis-server of its own, long enough for ``INFO cpu``
to resolve it, and prints per round: Redis CPU per request, server-side operations per
request (``INFO commandstats``, every ``redis.call`` inside a script counted) and script calls
per request.

``--callgrind`` runs that redis-server under valgrind's callgrind instead and prints the
server's instructions per request (counters zeroed before the drive, dumped after; the idle
server's own timers, measured over as long a pause, taken out): deterministic to about 1%,
so a change to the script shows as a number, not as noise.

``--capture FILE`` also writes every METER batch of the first arm's measured rounds (KEYS and
the decoded argument) to FILE; ``--replay FILE [--script meter.lua] [--json]`` then sends
exactly those batches again, renumbered (one writer, new sequence numbers, no deadline), to a
fresh server under callgrind: the script's instructions per request on identical work, which
is how two versions of meter.lua are compared (``--json`` for a script that reads only JSON).

Environment: MG_BENCH_KEYS (400), arms and sizes as options (``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ._common import REDIS_ENV, RedisWindow, command_calls, env_int, new_prefix, redis_client, redis_server
from .arms import build
from .inprocess import _loop_factory, drive

DEFAULT_SCRIPT = Path(__file__).parent.parent / "src" / "meterguard" / "store" / "lua" / "meter.lua"


@contextmanager
def _capturing(path: str | None) -> Iterator[list[tuple[list[str], Any]]]:
    """Every METER call's KEYS and decoded argument while active, written to ``path`` at the end."""
    captured: list[tuple[list[str], Any]] = []
    if path is None:
        yield captured
        return
    import msgspec

    from meterguard.store import _redis_meter

    # the METER call goes through the thin client's entry (_hot_script), not redis-py's _script
    original = _redis_meter.RedisMeter._hot_script

    async def spy(self: Any, script: Any, keys: Any, args: Any) -> Any:
        if script is _redis_meter.METER:
            payload = args[0]
            decode = msgspec.json.decode if payload[:1] in (b"{", "{") else msgspec.msgpack.decode
            captured.append((list(keys), decode(payload)))
        return await original(self, script, keys, args)

    _redis_meter.RedisMeter._hot_script = spy  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        _redis_meter.RedisMeter._hot_script = original  # type: ignore[method-assign]
        Path(path).write_bytes(msgspec.msgpack.encode(captured))


@contextmanager
def _server(callgrind: bool, workdir: str) -> Iterator[tuple[str, int]]:
    """A redis-server of this run's own (under callgrind when asked): (URL, pid)."""
    wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={Path(workdir) / 'callgrind.out.%p'}"]
    with redis_server(workdir, wrapper=wrapper if callgrind else (), ready_within=120.0) as (url, server):
        yield url, server.pid


class _Callgrind:
    """Instructions the server ran between ``zero`` and ``read`` (callgrind_control -z / -d)."""

    def __init__(self, pid: int, workdir: str) -> None:
        self.pid = pid
        self.workdir = workdir

    def _control(self, flag: str) -> None:
        subprocess.run(["callgrind_control", flag, str(self.pid)], check=True, capture_output=True)

    def zero(self) -> None:
        self._control("-z")

    def read(self) -> int:
        before = set(glob.glob(f"{self.workdir}/callgrind.out.{self.pid}*"))
        self._control("-d")
        for _ in range(100):
            dumps = set(glob.glob(f"{self.workdir}/callgrind.out.{self.pid}*")) - before
            if dumps:
                break
            time.sleep(0.05)
        (dump,) = dumps
        time.sleep(0.2)  # written by the server's own thread: let it finish
        for line in Path(dump).read_text().splitlines():
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {dump}")


async def _run(args: argparse.Namespace, url: str, counter: _Callgrind | None) -> None:
    os.environ[REDIS_ENV] = url
    prefix = new_prefix()
    keys = env_int("MG_BENCH_KEYS", 400)
    client = redis_client()
    built = {}
    for name in args.arms:
        built[name] = await build(name, redis_url=url, prefix=f"{prefix}-rc", keys=keys)
        await drive(built[name], args.warmup)
    idle_per_second = 0.0
    if counter is not None:  # the server's timers (serverCron, 10 Hz) while nothing is asked of it
        counter.zero()
        started = time.perf_counter()
        await asyncio.sleep(2.0)
        idle_per_second = counter.read() / (time.perf_counter() - started)
    figures: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in built}
    try:
        for round_no in range(args.rounds):
            order = list(built) if round_no % 2 == 0 else list(reversed(built))
            for name in order:
                window = RedisWindow(client)
                window.open()
                if counter is not None:
                    counter.zero()
                with _capturing(args.capture if name == args.arms[0] and round_no == 0 else None):
                    seconds, statuses = await drive(built[name], args.requests)
                instructions = 0.0
                if counter is not None:
                    instructions = counter.read() - idle_per_second * seconds
                cpu, calls = window.close()
                done = sum(statuses.values())
                ok = statuses.get(200, 0)
                scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
                ops = sum(count for command, count in calls.items() if command != "info")
                figures[name].append((cpu / max(ok, 1) * 1e6, ops / done, scripts / done, instructions / done))
                line = (
                    f"  {name:9} round {round_no + 1}: {done} requests ({done - ok} not 200), "
                    f"Redis CPU {cpu / max(ok, 1) * 1e6:6.1f} us/admitted, {ops / done:5.2f} ops/req, "
                    f"{scripts / done:5.3f} scripts/req"
                )
                if counter is not None:
                    line += f", {instructions / done / 1000:6.1f}k instr/req"
                print(line, file=sys.stderr)
                if args.commands:
                    print("    " + ", ".join(f"{c} {n / done:.3f}" for c, n in calls.items()), file=sys.stderr)
    finally:
        for arm in built.values():
            await arm.aclose()
        client.close()
    print(f"median of {args.rounds} rounds, {args.requests} requests each, {keys} keys:")
    for name, rows in figures.items():
        cpu, ops, scripts, instr = (statistics.median(column) for column in zip(*rows, strict=True))
        line = f"  {name:9} Redis CPU {cpu:6.1f} us/admitted request, {ops:5.2f} ops/req, {scripts:5.3f} scripts/req"
        if counter is not None:
            line += f", {instr / 1000:6.1f}k instructions/req"
        print(line)


def _replay(args: argparse.Namespace, url: str, counter: _Callgrind) -> None:
    """Send the captured batches twice (the first time builds the state), count the second."""
    import msgspec
    import redis

    from meterguard.store._redis_meter_wire import batch_payload

    batches = msgspec.msgpack.decode(Path(args.replay).read_bytes())
    encode = msgspec.json.encode if args.json else batch_payload
    requests = args.requests
    client = redis.Redis.from_url(url)
    sha = client.script_load(Path(args.script).read_text())
    seq = 0

    def send_all() -> None:
        nonlocal seq
        for keys, document in batches:
            seq += 1
            document = {**document, "q": seq, "d": 0, "w": "replay0000000001"}
            client.evalsha(sha, len(keys), *keys, encode(document))

    send_all()
    client.config_resetstat()
    counter.zero()
    send_all()
    instructions = counter.read()
    calls = command_calls(client)
    client.close()
    scripts = calls.get("evalsha", 0)
    ops = sum(count for command, count in calls.items() if command not in ("evalsha", "config|resetstat"))
    print(
        f"{Path(args.script).name}: {len(batches)} batches, {requests} requests: "
        f"{instructions / requests / 1000:.1f}k instructions/req, {ops / requests:.2f} ops/req, "
        f"{scripts / requests:.3f} scripts/req"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default="mg-exact,mg-fast", help="comma-separated Redis arms")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=12800)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--callgrind", action="store_true", help="count the server's instructions (slow)")
    parser.add_argument("--commands", action="store_true", help="also print the commands per request")
    parser.add_argument("--keep", metavar="DIR", help="the server's directory (callgrind dumps): kept, not temporary")
    parser.add_argument("--capture", metavar="FILE", help="write the first arm's METER batches of round 1 here")
    parser.add_argument("--replay", metavar="FILE", help="replay captured batches under callgrind (--requests: theirs)")
    parser.add_argument("--script", default=str(DEFAULT_SCRIPT), help="the meter.lua to replay with")
    parser.add_argument("--json", action="store_true", help="replay with JSON arguments (a script before MessagePack)")
    args = parser.parse_args(argv)
    args.arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    logging.getLogger("meterguard").setLevel(logging.ERROR)
    if args.replay:
        with _workdir(args.keep) as workdir, _server(True, workdir) as (url, pid):
            _replay(args, url, _Callgrind(pid, workdir))
        return 0
    with _workdir(args.keep) as workdir, _server(args.callgrind, workdir) as (url, pid):
        counter = _Callgrind(pid, workdir) if args.callgrind else None
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run(args, url, counter))
    return 0


@contextmanager
def _workdir(keep: str | None) -> Iterator[str]:
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="mg-redis-cost-") as workdir:
        yield workdir


if __name__ == "__main__":
    sys.exit(main())
