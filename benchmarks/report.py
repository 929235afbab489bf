"""The results as markdown: machine, versions, both harnesses, and each target of BENCHMARKS.md met or not.

The table goes into docs/benchmarks.md between ``<!-- bench:start -->`` and ``<!-- bench:end -->``;
the prose around the markers is left as it is.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ._common import REDIS_URL, redis_client
from .arms import MG_ARMS

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

SKELETON = f"""\
# Benchmarks

What "fast" means for meterguard, and how it is measured: the arms serving the same Starlette
app and the same JSON body of 10 records, two harnesses, ratios measured side by side in one run
with the arms interleaved, and each figure checked against its target (the last section).

## Running it

```sh
make bench                                   # both harnesses, then rewrites the results below
MG_BENCH_SECONDS=5 make bench                # shorter HTTP runs (default 10 s per arm and round)
MG_BENCH_ARMS=mg-exact,slowapi make bench    # a subset (bare is always run)
.venv/bin/python -m benchmarks inprocess     # one harness, printed only (also: http)
.venv/bin/python -m benchmarks profile mg-exact        # pyinstrument, top functions
.venv/bin/python -m benchmarks profile mg-exact --cprofile
```

Other knobs: `MG_BENCH_WARMUP` (s, default 2), `MG_BENCH_ROUNDS` (HTTP rounds, default 3),
`MG_BENCH_INPROC_ROUNDS` (default 7), `MG_BENCH_INPROC_REQUESTS` (per arm and round, default
6400), `MG_BENCH_KEYS` (default 400 keys, two per customer), `MG_BENCH_REDIS` (default
`redis://127.0.0.1:6379/0`).

The harness writes only keys under a random prefix of its own (`bench-<hex>`, passed to
meterguard as `?prefix=`) and deletes them (SCAN + UNLINK) at the end; it never flushes a
database. It runs **`CONFIG RESETSTAT`** on the server before each measured HTTP run and reads
`INFO commandstats` after: that resets the server's `INFO` statistics (commandstats, keyspace
hits and misses, ...) for every client of that server. Those server-side counts include each
`redis.call` made inside a Lua script, and on a shared Redis any other client's commands in
the same seconds (the `bare` and `mg-memory` rows, which send none, show whether that
happened), so the figure compared with the target, *Redis commands per request*, is counted
in the gateway process itself, in redis-py (benchmarks/_count.py): every command sent, a
pipeline counting each of its commands.

`python -m benchmarks profile ARM` runs one arm in the in-process loop under pyinstrument
(`--cprofile` for cProfile, `--tree` for the call tree, `--requests N`, `--top N`) and prints
the functions with the most self and inclusive time; the sampler slows the loop down, so read
shares, not microseconds.

## Method

(to be written)

## Results

{START}
{END}

## Profile lessons

(to be written)
"""


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def environment() -> dict[str, str]:
    cpuinfo = _read("/proc/cpuinfo").splitlines()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    meminfo = _read("/proc/meminfo").splitlines()
    mem_kb = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    try:
        cpus = str(len(os.sched_getaffinity(0)))
    except AttributeError:
        cpus = str(os.cpu_count())
    try:
        client = redis_client()
        redis_server = str(client.info("server")["redis_version"])
        client.close()
    except Exception as exc:
        redis_server = f"unknown ({type(exc).__name__})"
    try:
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
        wrk_version = (wrk.stdout or wrk.stderr).split()[1].removeprefix("debian/")
    except (OSError, IndexError):
        wrk_version = "not installed"
    commit = _git("rev-parse", "--short", "HEAD")
    # read-only: `git diff --quiet` exits 1 when src/ differs from HEAD
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "src"], cwd=ROOT, check=False).returncode == 1
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": cpus,
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "meterguard": _version("meterguard"),
        "commit": (commit + (" + uncommitted changes in src/" if dirty else "")) if commit else "unknown",
        "redis-py": _version("redis"),
        "hiredis": _version("hiredis"),
        "starlette": _version("starlette"),
        "uvicorn": _version("uvicorn"),
        "uvloop": _version("uvloop"),
        "httptools": _version("httptools"),
        "slowapi": _version("slowapi"),
        "limits": _version("limits"),
        "redis-server": redis_server,
        "wrk": wrk_version,
        "redis-url": REDIS_URL,
    }


# targets ----------------------------------------------------------------------------------------------


def _get(results: dict[str, Any] | None, arm: str, field: str) -> float | None:
    value = ((results or {}).get("arms", {}).get(arm) or {}).get(field)
    return value if isinstance(value, int | float) else None


def targets(inprocess: dict[str, Any] | None, http: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) for every row of BENCHMARKS.md's targets table."""
    rows: list[tuple[str, str, str, str]] = []

    def row(figure: str, value: float | None, target: float, at_least: bool, fmt: Callable[[float], str]) -> None:
        if value is None:
            rows.append((figure, "n/a", (">= " if at_least else "<= ") + fmt(target), "not measured"))
            return
        met = value >= target if at_least else value <= target
        rows.append((figure, fmt(value), (">= " if at_least else "<= ") + fmt(target), "met" if met else "**not met**"))

    def ratio(value: float) -> str:
        return f"{value:.2f}"

    def times(value: float) -> str:
        return f"{value:.1f}x"

    def micro(value: float) -> str:
        return f"{value:.1f} us"

    def cmds(value: float) -> str:
        return f"{value:.3f}"

    def milli(value: float) -> str:
        return f"{value:.2f} ms"

    row("mg-memory, HTTP ratio to bare", _get(http, "mg-memory", "ratio"), 0.90, True, ratio)
    row("mg-fast, HTTP ratio to bare", _get(http, "mg-fast", "ratio"), 0.85, True, ratio)
    row("mg-exact, HTTP ratio to bare", _get(http, "mg-exact", "ratio"), 0.70, True, ratio)
    for arm in MG_ARMS:
        row(f"{arm} vs slowapi, requests/s", _get(http, arm, "vs_slowapi"), 3.0, True, times)
    for arm in ("mg-memory", "mg-fast"):
        row(f"{arm}, in-process overhead", _get(inprocess, arm, "overhead_us"), 10.0, False, micro)
    row("mg-exact, Redis commands per request", _get(http, "mg-exact", "cmds_per_req"), 0.25, False, cmds)
    row("mg-fast, Redis commands per request", _get(http, "mg-fast", "cmds_per_req"), 0.05, False, cmds)
    for arm in MG_ARMS:
        row(f"{arm}, p99 latency added (HTTP, 32 in flight)", _get(http, arm, "p99_added_ms"), 2.0, False, milli)
    row("`meterguard serve` vs the same app under plain uvicorn (mg-serve / mg-exact, req/s)",
        _get(http, "mg-serve", "vs_mg_exact"), 0.95, True, ratio)  # fmt: skip
    return rows


# markdown ---------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:{spec}}{suffix}"


def render(env: dict[str, str], inprocess: dict[str, Any] | None, http: dict[str, Any] | None) -> str:
    out: list[str] = []
    out.append(f"_Written by `make bench` on {env['date']}; everything between the markers is replaced on each run._")
    out.append("")
    out.append(
        f"**Machine**: {env['cpus']} CPUs (nproc), {env['cpu']}, {env['memory']} RAM, Linux {env['kernel']}; "
        "wrk, uvicorn and Redis share these CPUs."
    )
    out.append("")
    out.append(
        f"**Versions**: Python {env['python']}, meterguard {env['meterguard']} (commit {env['commit']}), "
        f"redis-py {env['redis-py']} (hiredis {env['hiredis']}), starlette {env['starlette']}, "
        f"uvicorn {env['uvicorn']} (uvloop {env['uvloop']}, httptools {env['httptools']}), "
        f"slowapi {env['slowapi']}, limits {env['limits']}, Redis server {env['redis-server']}, wrk {env['wrk']}."
    )
    out.append("")
    if http is not None:
        out.append(
            f"### HTTP: uvicorn, 1 worker, uvloop + httptools; wrk -t1 -c{http['concurrency']}, "
            f"{http['warmup']:g} s warm-up + {http['seconds']:g} s, {http['rounds']} rounds"
        )
        out.append("")
        out.append(
            f"{http['keys']} keys in rotation (x-api-key). Arms interleaved, order alternating by round; each "
            "figure is the **median over rounds**, ratios taken within a round first. Redis commands per "
            "request (*cmd/req*): the commands the gateway process sent, counted in redis-py (a pipeline "
            "counts each command; key lookups and settlements included) / requests completed. *Redis ops/req*: "
            "`CONFIG RESETSTAT` before the run, the sum of `INFO commandstats` after, which also counts each "
            "`redis.call` inside a script (and any other client of the server in those seconds)."
        )
        out.append("")
        out.append(
            "| arm | req/s | ratio to bare | vs slowapi | p50 | p99 | p99 added | Redis cmd/req "
            "| Redis ops/req | gateway CPU/req | Redis CPU/req | errors |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for arm, res in http["arms"].items():
            if "rps" not in res:
                out.append(f"| {arm} | failed: {res.get('error', '?')} ||||||||||||")
                continue
            out.append(
                f"| {arm} | {res['rps']:.0f} | {_fmt(res['ratio'], '.2f')} | {_fmt(res['vs_slowapi'], '.2f', 'x')} "
                f"| {res['p50_ms']:.2f} ms | {res['p99_ms']:.2f} ms | {_fmt(res['p99_added_ms'], '+.2f', ' ms')} "
                f"| {_fmt(res['cmds_per_req'], '.3f')} | {_fmt(res['server_ops_per_req'], '.2f')} "
                f"| {_fmt(res['gateway_cpu_us'], '.0f', ' us')} "
                f"| {_fmt(res['redis_cpu_us'], '.0f', ' us')} | {res['errors']} |"
            )
        out.append("")
        for field, title in (
            ("sent", "Redis commands sent per request, by command (gateway side, mean over rounds):"),
            (
                "commands",
                "Redis operations per request, by command (server side, mean over rounds; "
                "commands run inside scripts included):",
            ),
        ):
            breakdown = _breakdown(http["arms"], field)
            if breakdown:
                out.extend([title, "", *breakdown, ""])
        failed = [f"- {arm}: {res['error']}" for arm, res in http["arms"].items() if "rps" in res and "error" in res]
        if failed:
            out.append("Arms that failed in some round (figures from the rounds that ran):")
            out.append("")
            out.extend(failed)
            out.append("")
    if inprocess is not None:
        out.append(
            f"### In-process: raw ASGI, no HTTP, {inprocess['concurrency']} tasks on uvloop, "
            f"{inprocess['requests']} requests per arm and round, {inprocess['rounds']} rounds"
        )
        out.append("")
        out.append(
            "Microseconds of wall time per request with 32 in flight; the median over rounds. The overhead "
            "is the median over rounds of (arm - bare) within the round."
        )
        out.append("")
        out.append("| arm | us/request | overhead over bare | Redis cmd/req | non-200 |")
        out.append("|---|---:|---:|---:|---:|")
        for arm, res in inprocess["arms"].items():
            if "us" not in res:
                out.append(f"| {arm} | failed: {res.get('error', '?')} ||||")
                continue
            overhead = "" if arm == "bare" else _fmt(res["overhead_us"], "+.1f", " us")
            cmds = _fmt(res.get("cmds_per_req"), ".3f")
            out.append(f"| {arm} | {res['us']:.1f} | {overhead} | {cmds} | {res['non_200']} |")
        out.append("")
        breakdown = _breakdown(inprocess["arms"], "sent")
        if breakdown:
            out.extend(["Redis commands sent per request, by command (all rounds):", "", *breakdown, ""])
    out.append("### Against the targets")
    out.append("")
    out.append("| figure | measured | target | verdict |")
    out.append("|---|---:|---:|---|")
    for figure, measured, target, verdict in targets(inprocess, http):
        out.append(f"| {figure} | {measured} | {target} | {verdict} |")
    return "\n".join(out)


def _breakdown(arms: dict[str, Any], field: str) -> list[str]:
    lines = []
    for arm, res in arms.items():
        table = {name: value for name, value in res.get(field, {}).items() if value >= 0.0005}
        if table:
            ranked = sorted(table.items(), key=lambda item: -item[1])
            lines.append(f"- {arm}: " + ", ".join(f"{name.lower()} {value:.3f}" for name, value in ranked))
    return lines


def write_doc(block: str, path: Path = DOC) -> None:
    """Replace what lies between the markers (creating the file or the markers when missing)."""
    text = path.read_text() if path.exists() else SKELETON
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{block}\n{END}{tail}")
