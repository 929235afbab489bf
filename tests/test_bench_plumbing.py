"""The parts of ``make bench`` that can be wrong without wrk: what is counted, and how it is summed up.

No timing is asserted. A process tree that burns a known amount of CPU must be counted whole,
a private Redis must report exactly the commands it was sent, and synthetic rounds must give
the medians, within-round comparisons and verdicts that BENCHMARKS.md defines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from benchmarks import figures, http, report
from benchmarks._common import COMPILED, RedisWindow, command_calls, redis_cpu_seconds
from benchmarks._proc import process_cpu_seconds, tree_cpu_seconds

BURN_SECONDS = 0.5

# The server stand-in: starts a child that burns BURN_SECONDS of CPU, then either waits for it
# (reaped: its CPU moves to our cutime) or leaves it alive; then says so and idles.
ROOT_SCRIPT = textwrap.dedent(
    """
    import pathlib, subprocess, sys, time
    mode, burn, workdir = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
    child = subprocess.Popen([sys.executable, "-c", burn, str(workdir / "child")])
    if mode == "reap":
        child.wait()
    else:
        while not (workdir / "child").exists():
            time.sleep(0.01)
    (workdir / "ready").write_text("")
    time.sleep(120)
    """
)
CHILD_SCRIPT = textwrap.dedent(
    f"""
    import os, pathlib, sys, time
    end = time.process_time() + {BURN_SECONDS}
    while time.process_time() < end:
        pass
    pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))
    if os.environ.get("MG_KEEP_CHILD"):
        time.sleep(120)
    """
)


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["live", "reap"])
def test_the_cpu_of_a_server_counts_its_children_live_or_reaped(tmp_path: Path, mode: str) -> None:
    env = {**os.environ, **({"MG_KEEP_CHILD": "1"} if mode == "live" else {})}
    root = subprocess.Popen([sys.executable, "-c", ROOT_SCRIPT, mode, CHILD_SCRIPT, str(tmp_path)], env=env)
    child_pid = 0
    try:
        _wait_for(tmp_path / "ready")
        child_pid = int((tmp_path / "child").read_text())
        alive = Path(f"/proc/{child_pid}").exists()
        assert alive == (mode == "live")
        own = process_cpu_seconds(root.pid)
        tree = tree_cpu_seconds(root.pid)
        # the child's burn is in the tree's figure and not in the root's own
        assert own < BURN_SECONDS / 2, own
        assert tree >= own + BURN_SECONDS * 0.9, (own, tree)
    finally:
        if mode == "live" and child_pid:
            os.kill(child_pid, signal.SIGKILL)
        root.kill()
        root.wait()


def test_the_cpu_of_a_process_that_is_gone_is_an_error() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    with pytest.raises(ProcessLookupError):
        tree_cpu_seconds(int(done.stdout))


# Redis's INFO, on a server of the test's own (CONFIG RESETSTAT would disturb a shared one) ------------


def test_a_redis_window_counts_exactly_the_commands_run_in_it_scripts_included(
    redis_servers: Callable[..., Any],
) -> None:
    server = redis_servers()
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        client.set("before", "1")  # before the window: reset away
        window = RedisWindow(client)
        window.open()
        client.set("a", "1")
        client.set("b", "2")
        client.eval("redis.call('incr', KEYS[1]); redis.call('incr', KEYS[1]); return 1", 1, "c")
        client.config_get("maxmemory")
        _cpu, calls = window.close()
    assert calls == {"set": 2, "eval": 1, "incr": 2, "config|get": 1}


def test_a_redis_window_measures_the_servers_cpu(redis_servers: Callable[..., Any]) -> None:
    server = redis_servers()
    burn = "local x = 0 for i = 1, tonumber(ARGV[1]) do x = x + i % 7 end return x"
    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        # calibrate: how many iterations make about 0.3 s of the server's CPU on this machine
        start = redis_cpu_seconds(client)
        client.eval(burn, 0, 2_000_000)
        per_iteration = max(redis_cpu_seconds(client) - start, 0.001) / 2_000_000
        iterations = int(0.3 / per_iteration)
        window = RedisWindow(client)
        window.open()
        client.eval(burn, 0, iterations)
        cpu, calls = window.close()
        assert command_calls(client)["eval"] == 1  # commandstats read as {command: calls}
    assert calls == {"eval": 1}
    assert 0.15 <= cpu <= 1.5, cpu


# figures: one window, rounds, targets ---------------------------------------------------------------


def _wrk(requests: int, *, status: int = 0, seconds: float = 1.0) -> dict[str, Any]:
    """What benchmarks/http.py's wrk script prints: 3 socket errors, p50 2 ms, p99 5 ms."""
    errors = {"connect": 0, "read": 1, "write": 0, "timeout": 2, "status": status}
    latency = {"p50_us": 2000, "p90_us": 4000, "p99_us": 5000, "mean_us": 2500.0}
    return {"requests": requests, "duration_us": int(seconds * 1e6), **errors, **latency}


def test_a_window_becomes_figures_per_request_and_per_admitted_request() -> None:
    sample = figures.window_figures(
        _wrk(10_000, status=2_000, seconds=2.0),
        gateway_cpu=0.5,
        redis_cpu=0.16,
        calls={"evalsha": 100, "hincrby": 1_400},
        sent={"EVALSHA": 100, "HGETALL": 50},
    )
    assert sample["rps"] == 5_000
    assert sample["admitted"] == 8_000
    assert sample["non_2xx"] == 2_000
    assert sample["errors"] == 3  # socket errors; refusals are counted apart
    assert sample["gateway_cpu_us"] == pytest.approx(50.0)
    assert sample["redis_cpu_us"] == pytest.approx(16.0)
    assert sample["redis_cpu_admitted_us"] == pytest.approx(20.0)
    assert sample["server_ops_per_req"] == pytest.approx(0.15)
    assert sample["commands"] == {"evalsha": pytest.approx(0.01), "hincrby": pytest.approx(0.14)}
    assert sample["cmds_per_req"] == pytest.approx(0.015)
    assert sample["p50_ms"] == 2.0 and sample["p99_ms"] == 5.0
    assert sample["gateway_busy"] == pytest.approx(0.25)  # 0.5 s of CPU over a 2 s window


def _sample(round_no: int, rps: float, gateway_us: float, redis_us: float = 0.0) -> figures.Sample:
    requests = int(rps)
    sample = figures.window_figures(
        _wrk(requests),
        gateway_cpu=gateway_us * requests / 1e6,
        redis_cpu=redis_us * requests / 1e6,
        calls={},
        sent={},
    )
    sample["round"] = round_no
    return sample


def _rounds(table: dict[str, list[tuple[float, float, float]]]) -> dict[str, list[figures.Sample]]:
    return {arm: [_sample(i, *values) for i, values in enumerate(rows)] for arm, rows in table.items()}


def test_comparisons_are_taken_within_a_round_before_the_median() -> None:
    per_round = _rounds(
        {
            "bare": [(10_000, 60, 0), (5_000, 70, 0), (8_000, 65, 0)],
            # ratios to bare 0.7, 0.6, 0.5: median 0.6, where the ratio of the medians would be 0.5;
            # CPU added 40, 25, 45: median 40, where the difference of the medians would be 35
            "mg-memory": [(7_000, 100, 0), (3_000, 95, 0), (4_000, 110, 0)],
            "slowapi": [(2_000, 300, 50), (1_000, 320, 55), (2_000, 310, 52)],
        }
    )
    results = figures.aggregate(["bare", "mg-memory", "slowapi"], per_round, {})
    memory = results["mg-memory"]
    assert memory["rps"] == 4_000
    assert memory["ratio"] == pytest.approx(0.6)
    assert memory["gateway_cpu_us"] == pytest.approx(100)
    assert memory["gateway_cpu_added_us"] == pytest.approx(40)
    assert memory["vs_slowapi"] == pytest.approx(3.0)  # 3.5, 3.0, 2.0
    assert results["bare"]["ratio"] == 1.0
    assert results["bare"]["gateway_cpu_added_us"] == 0.0
    assert results["slowapi"]["redis_cpu_us"] == pytest.approx(52)
    assert memory["rounds"] == 3 and memory["requests"] == 14_000


def test_a_baseline_arm_is_its_arm_at_an_earlier_commit_compared_within_rounds() -> None:
    """MG_BENCH_BASELINE=REV: each of meterguard's arms runs again on REV's meterguard, side by
    side with the current one in the same rounds, and the report compares the two."""
    assert http.baseline_arms(["bare", "mg-exact", "slowapi", "mg-serve"], "abc1234") == [
        "bare", "mg-exact", "mg-exact@abc1234", "slowapi", "mg-serve",
    ]  # fmt: skip
    per_round = _rounds(
        {
            "bare": [(10_000, 60, 0), (9_000, 62, 0), (10_000, 60, 0)],
            # 1.25, 1.10, 1.40 of the baseline's req/s: median 1.25; CPU -10, -5, -20: median -10
            "mg-exact": [(5_000, 100, 30), (4_400, 105, 31), (4_200, 100, 29)],
            "mg-exact@abc1234": [(4_000, 110, 33), (4_000, 110, 33), (3_000, 120, 35)],
        }
    )
    arms = ["bare", "mg-exact", "mg-exact@abc1234"]
    results = figures.aggregate(arms, per_round, {})
    baseline = results["mg-exact@abc1234"]
    assert baseline["current_vs_baseline"] == pytest.approx(1.25)
    assert baseline["current_cpu_vs_baseline_us"] == pytest.approx(-10)
    assert baseline["current_redis_vs_baseline_us"] == pytest.approx(-3)
    assert "current_vs_baseline" not in results["mg-exact"]
    http_results = {"concurrency": 32, "warmup": 1.0, "seconds": 3.0, "rounds": 3, "keys": 400, "arms": results}
    block = report.render(ENV, None, http_results)
    assert "| mg-exact@abc1234 | 4000 | 0.40 |" in block
    assert (
        "mg-exact against mg-exact@abc1234 (the same arm served by meterguard at commit abc1234, "
        "MG_BENCH_BASELINE): 1.25 of its requests/s, gateway CPU -10 µs per request, Redis CPU -3.0 µs "
        "per admitted request." in block
    )


def test_a_compiled_arm_is_its_arm_on_this_tree_compiled_and_says_so() -> None:
    """MG_BENCH_COMPILED=1: the same comparison, against this tree compiled by mypyc."""
    arms = http.baseline_arms(["bare", "mg-memory"], COMPILED)
    assert arms == ["bare", "mg-memory", "mg-memory@mypyc"]
    per_round = _rounds(
        {
            "bare": [(10_000, 60, 0)] * 3,
            "mg-memory": [(5_000, 100, 0)] * 3,
            "mg-memory@mypyc": [(5_500, 92, 0)] * 3,
        }
    )
    results = figures.aggregate(arms, per_round, {})
    http_results = {"concurrency": 32, "warmup": 1.0, "seconds": 3.0, "rounds": 3, "keys": 400, "arms": results}
    block = report.render(ENV, None, http_results)
    assert (
        "mg-memory against mg-memory@mypyc (the same arm, this tree with its request path compiled by mypyc, "
        "MG_BENCH_COMPILED): 0.91 of its requests/s, gateway CPU +8 µs per request" in block
    )
    assert http.baseline_src(Path("/w"), COMPILED) == Path("/w/baseline-mypyc/src")  # where its servers look


def test_a_baseline_is_a_commit_of_this_repository_extracted_for_the_run(tmp_path: Path) -> None:
    commit, source = http.baseline_source("HEAD", tmp_path)
    assert (source / "meterguard" / "__init__.py").is_file()
    assert (source / "meterguard" / "store" / "lua" / "meter.lua").is_file()
    assert source == tmp_path / f"baseline-{commit}" / "src"
    with pytest.raises(SystemExit, match="not a commit of this repository"):
        http.baseline_source("no-such-revision", tmp_path)


def test_instruction_counts_against_a_baseline_run_the_baseline_s_meterguard(tmp_path: Path) -> None:
    """benchmarks.instructions --baseline: the driven process imports REV's meterguard, not the
    installed (editable) one."""
    from benchmarks import instructions

    _, source = http.baseline_source("HEAD", tmp_path)
    imported = subprocess.run(
        [sys.executable, "-c", "import meterguard; print(meterguard.__file__)"],
        env=instructions.driver_env(source), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(imported).is_relative_to(source)
    here = subprocess.run(
        [sys.executable, "-c", "import meterguard; print(meterguard.__file__)"],
        env=instructions.driver_env(None), capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert not Path(here).is_relative_to(source)


def test_an_arm_missing_a_round_is_compared_over_the_rounds_it_ran() -> None:
    per_round = _rounds({"bare": [(10_000, 60, 0), (5_000, 70, 0), (8_000, 65, 0)]})
    per_round["mg-exact"] = [_sample(0, 3_000, 200, 30), _sample(2, 4_000, 210, 25)]
    per_round["mg-serve"] = [_sample(0, 2_700, 220, 30), _sample(1, 9_999, 1, 1), _sample(2, 4_000, 215, 25)]
    results = figures.aggregate(["bare", "mg-exact", "mg-serve", "limits-aio"], per_round, {"limits-aio": "boom"})
    assert results["mg-exact"]["ratio"] == pytest.approx((0.3 + 0.5) / 2)
    assert results["mg-serve"]["vs_mg_exact"] == pytest.approx((0.9 + 1.0) / 2)  # round 1 has no mg-exact
    assert results["mg-serve"]["cpu_vs_mg_exact_us"] == pytest.approx((20 + 5) / 2)
    assert results["mg-serve"]["cpu_ratio_vs_mg_exact"] == pytest.approx((220 / 200 + 215 / 210) / 2)
    assert results["mg-exact"]["vs_limits_aio"] is None
    assert results["limits-aio"] == {"error": "boom"}


def _http(**arms: dict[str, float]) -> dict[str, Any]:
    return {"arms": arms}


def _verdicts(http: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {figure: (measured, target, verdict) for figure, measured, target, verdict in figures.targets(http)}


def test_the_verdict_table_is_benchmarks_md_targets() -> None:
    limits = [(target.arm, target.field, target.limit, target.at_least) for target in figures.TARGETS]
    assert limits == [
        ("mg-memory", "ratio", 0.65, True),
        ("mg-fast", "ratio", 0.60, True),
        ("mg-exact", "ratio", 0.45, True),
        ("mg-memory", "gateway_cpu_added_us", 40.0, False),
        ("mg-fast", "gateway_cpu_added_us", 45.0, False),
        ("mg-exact", "redis_cpu_admitted_us", 20.0, False),
        ("mg-fast", "redis_cpu_admitted_us", 3.0, False),
        ("mg-fast", "vs_slowapi", 3.0, True),
        ("mg-exact", "vs_limits_aio", 1.0, True),
        ("mg-serve", "vs_mg_exact", 0.95, True),
        ("mg-serve", "cpu_ratio_vs_mg_exact", 1.05, False),
    ]


def test_verdicts_at_and_beyond_each_limit() -> None:
    at_limit = _http(
        **{
            "mg-memory": {"ratio": 0.65, "gateway_cpu_added_us": 40.0},
            "mg-fast": {"ratio": 0.60, "gateway_cpu_added_us": 45.0, "redis_cpu_admitted_us": 3.0, "vs_slowapi": 3.0},
            "mg-exact": {"ratio": 0.45, "redis_cpu_admitted_us": 20.0, "vs_limits_aio": 1.0},
            "mg-serve": {"vs_mg_exact": 0.95, "cpu_ratio_vs_mg_exact": 1.05},
        }
    )
    assert {verdict for _measured, _target, verdict in _verdicts(at_limit).values()} == {"met"}
    beyond = _http(
        **{
            "mg-memory": {"ratio": 0.64, "gateway_cpu_added_us": 40.2},
            "mg-fast": {"ratio": 0.59, "gateway_cpu_added_us": 46.0, "redis_cpu_admitted_us": 3.1, "vs_slowapi": 2.9},
            "mg-exact": {"ratio": 0.44, "redis_cpu_admitted_us": 20.5, "vs_limits_aio": 0.99},
            "mg-serve": {"vs_mg_exact": 0.94, "cpu_ratio_vs_mg_exact": 1.06},
        }
    )
    verdicts = _verdicts(beyond)
    assert {verdict for _measured, _target, verdict in verdicts.values()} == {"**not met**"}
    assert verdicts["mg-exact, Redis CPU per admitted request"] == ("20.5 µs", "<= 20.0 µs", "**not met**")
    assert verdicts["mg-fast vs slowapi, requests/s"] == ("2.90x", ">= 3.00x", "**not met**")
    just_under = _verdicts(_http(**{"mg-fast": {"vs_slowapi": 2.9993}}))
    assert just_under["mg-fast vs slowapi, requests/s"] == ("2.9993x", ">= 3.00x", "**not met**")
    missing = _verdicts(_http(**{"mg-memory": {"error": "boom"}}))
    assert {verdict for _measured, _target, verdict in missing.values()} == {"not measured"}


ENV = {key: "x" for key in ("date", "cpus", "cpu", "memory", "kernel", "python", "meterguard", "commit", "redis-py",
       "hiredis", "starlette", "uvicorn", "uvloop", "httptools", "slowapi", "limits", "redis-server", "wrk",
       "redis-url")} | {"redis-private": "yes"}  # fmt: skip


def test_the_report_shows_every_arm_and_the_targets_as_measured(tmp_path: Path) -> None:
    per_round = _rounds(
        {
            "bare": [(10_000, 60, 0)],
            "noop": [(9_700, 62, 0)],
            "mg-memory": [(6_000, 100, 0)],
            "mg-fast": [(5_000, 120, 2.5)],
            "slowapi": [(1_500, 300, 40)],
        }
    )
    arms = ["bare", "noop", "mg-memory", "mg-fast", "slowapi"]
    http = {"concurrency": 32, "warmup": 1.0, "seconds": 3.0, "rounds": 1, "keys": 400,
            "arms": figures.aggregate(arms, per_round, {})}  # fmt: skip
    block = report.render(ENV, None, http)
    assert "| noop | 9700 | 0.97 |" in block
    assert "| mg-memory | 6000 | 0.60 | 2.00 ms | 5.00 ms | 100 µs | +40 µs | 0.0 µs | 0.0 µs |" in block
    assert "| 0.00 | 0.000 | 0.60 | 0 | 3 |" in block  # ops, cmds sent, busy (6000/s x 100 µs), non-2xx, errors
    assert "| mg-memory, HTTP ratio to bare | 0.60 | >= 0.65 | **not met** |" in block
    assert "| mg-fast, gateway CPU added per request | 60.0 µs | <= 45.0 µs | **not met** |" in block
    assert "| mg-fast vs slowapi, requests/s | 3.33x | >= 3.00x | met |" in block
    assert "| mg-exact, HTTP ratio to bare | n/a | >= 0.45 | not measured |" in block
    assert "in-process overhead" not in block and "p99 latency added" not in block

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# prose\n\n{report.START}\nold figures\n{report.END}\n\n## after\n")
    report.write_doc(block, doc)
    text = doc.read_text()
    assert "old figures" not in text and block in text
    assert text.startswith("# prose") and text.endswith("## after\n")
