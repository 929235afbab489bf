"""The garbage collector's settings of a serving process (meterguard/_gc.py).

Each case runs in a fresh interpreter: the settings belong to the process, and this one's were
set by whichever test started a gateway first. The last case drives exact mode against a real
Redis with 32 requests in flight and counts the collections that ran: the reason for the
tuning, and what breaks if it stops being applied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from .conftest import REDIS_URL, drop_keys

ROOT = Path(__file__).resolve().parent.parent

STARTUP = textwrap.dedent(
    """
    import asyncio, gc, json, sys
    from meterguard import MeterGuard
    from meterguard.config import parse_config

    PLANS = '''
    version: 1
    plans:
      free: {rate_limits: ["10/second"]}
    '''
    if sys.argv[1] != "-":
        gc.set_threshold(int(sys.argv[1]))

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})

    async def main():
        try:
            guard = MeterGuard(app, config=parse_config(PLANS))
        except Exception as exc:
            print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
            return
        before = {"threshold": gc.get_threshold()[0], "frozen": gc.get_freeze_count()}
        messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])

        async def receive():
            return next(messages)

        async def send(message):
            pass

        await guard({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
        after = {"threshold": gc.get_threshold()[0], "frozen": gc.get_freeze_count()}
        print(json.dumps({"before": before, "after": after}))

    asyncio.run(main())
    """
)


def _run(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> dict[str, Any]:
    environment = {k: v for k, v in os.environ.items() if k != "MG_GC_TUNING"}
    environment.update(env or {})
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), environment.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=environment, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_startup_freezes_what_startup_left_and_raises_the_young_threshold() -> None:
    seen = _run(STARTUP, "-")
    assert seen["before"] == {"threshold": 700, "frozen": 0}
    assert seen["after"]["threshold"] == 10_000
    assert seen["after"]["frozen"] > 1000  # modules, the app, the config


def test_a_threshold_the_application_chose_is_kept() -> None:
    seen = _run(STARTUP, "2000")
    assert seen["after"]["threshold"] == 2000
    assert seen["after"]["frozen"] > 1000


def test_mg_gc_tuning_off_leaves_the_collector_alone() -> None:
    seen = _run(STARTUP, "-", env={"MG_GC_TUNING": "off"})
    assert seen["after"] == {"threshold": 700, "frozen": 0}


def test_a_bad_mg_gc_tuning_is_refused_with_a_clear_error() -> None:
    seen = _run(STARTUP, "-", env={"MG_GC_TUNING": "sometimes"})
    assert seen["error"] == "ConfigError"
    assert seen["message"] == "<environment>: MG_GC_TUNING: 'sometimes': expected on or off"


EXACT = textwrap.dedent(
    """
    import asyncio, gc, json, sys
    import uvloop
    from benchmarks.arms import build
    from benchmarks.inprocess import drive

    url, prefix, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    collections = {0: 0, 1: 0, 2: 0}

    def count(phase, info):
        if phase == "start":
            collections[info["generation"]] += 1

    async def main():
        built = await build("mg-exact", redis_url=url, prefix=prefix, keys=64)
        try:
            await drive(built, 320)  # the first request starts the gateway (no lifespan here)
            gc.callbacks.append(count)
            _, statuses = await drive(built, requests)
        finally:
            gc.callbacks.remove(count)
            await built.aclose()
        print(json.dumps({"collections": collections, "statuses": statuses}))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
    """
)


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="CPython 3.14's incremental collector has other thresholds")
@pytest.mark.parametrize("tuning", ["on", "off"])
async def test_exact_mode_with_requests_in_flight_runs_no_collection_once_tuned(tuning: str, key_prefix: str) -> None:
    requests = 1600
    try:
        seen = _run(EXACT, REDIS_URL, key_prefix, str(requests), env={"MG_GC_TUNING": tuning}, timeout=120)
    finally:
        await drop_keys(REDIS_URL, f"{key_prefix}-mg-exact")  # the arm's store prefix (benchmarks/arms.py)
    assert seen["statuses"] == {"200": requests}
    young, full = seen["collections"]["0"], seen["collections"]["2"]
    if tuning == "on":
        assert full == 0
        assert young <= requests // 400, seen
    else:
        # What the tuning removes: the requests waiting on Redis hold more objects than the
        # default threshold, so a collection ran every few requests.
        assert young >= requests // 100, seen
