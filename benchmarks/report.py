"""The results as markdown: machine, versions, both harnesses, and each target of BENCHMARKS.md met or not.

The table goes into docs/benchmarks.md between ``<!-- bench:start -->`` and ``<!-- bench:end -->``;
the prose around the markers is left as it is.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ._common import COMPILED, redis_client, redis_url
from .figures import targets

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

# Only for a checkout without docs/benchmarks.md: the doc's prose lives in the doc.
SKELETON = f"""\
# Benchmarks

How meterguard's speed is measured: `make bench` (benchmarks/), each figure against its target.

## Results

{START}
{END}
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


def environment(*, private_redis: bool) -> dict[str, str]:
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
        "redis-url": redis_url(),
        "redis-private": "yes" if private_redis else "no",
    }


# markdown ---------------------------------------------------------------------------------------------


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


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
    redis_where = (
        'private to the run, `--save "" --appendonly no`'
        if env.get("redis-private") == "yes"
        else f"{env['redis-url']}, named by MG_BENCH_REDIS: its other clients' work counts in the Redis figures"
    )
    out.append(
        f"**Versions**: Python {env['python']}, meterguard {env['meterguard']} (commit {env['commit']}), "
        f"redis-py {env['redis-py']} (hiredis {env['hiredis']}), starlette {env['starlette']}, "
        f"uvicorn {env['uvicorn']} (uvloop {env['uvloop']}, httptools {env['httptools']}), "
        f"slowapi {env['slowapi']}, limits {env['limits']}, Redis server {env['redis-server']} ({redis_where}), "
        f"wrk {env['wrk']}."
    )
    out.append("")
    if http is not None:
        out.extend(_http_section(http))
    if inprocess is not None:
        out.extend(_inprocess_section(inprocess))
    out.append("### Against the targets")
    out.append("")
    out.append("The project's targets, each against the HTTP figure above (medians over rounds).")
    out.append("")
    out.append("| figure | measured | target | verdict |")
    out.append("|---|---:|---:|---|")
    for figure, measured, target, verdict in targets(http):
        out.append(f"| {figure} | {measured} | {target} | {verdict} |")
    return "\n".join(out)


def _served_by(revision: str) -> str:
    if revision == COMPILED:
        return "the same arm, this tree with its request path compiled by mypyc, MG_BENCH_COMPILED"
    return f"the same arm served by meterguard at commit {revision}, MG_BENCH_BASELINE"


def _http_section(http: dict[str, Any]) -> list[str]:
    out = [
        f"### HTTP: uvicorn, 1 worker, uvloop + httptools, no access log; wrk -t1 -c{http['concurrency']}, "
        f"{http['warmup']:g} s warm-up + {http['seconds']:g} s, {_plural(http['rounds'], 'round')}",
        "",
        f"{http['keys']} keys in rotation (x-api-key). Arms interleaved, order alternating by round; each "
        "figure is the **median over rounds** (the breakdowns by command: the mean), and every comparison "
        "(ratio to bare, CPU added over bare) is taken within a round first. Over the measured window: "
        "*gateway CPU* is user + system CPU of every process of the server (/proc) per request completed; "
        "*Redis CPU* is `used_cpu_user + used_cpu_sys` of `INFO cpu`, per request and per admitted (2xx) "
        "request; *Redis ops* the sum of `INFO commandstats` after `CONFIG RESETSTAT`, which counts each "
        "`redis.call` inside a script; *cmds sent* the commands the gateway sent, counted in redis-py (a "
        "pipeline counts each command); *gateway busy* the CPUs the server kept busy (its CPU over the "
        "window's wall time: near 1.00, one worker is bound by its own CPU; below, it waited).",
        "",
        "| arm | req/s | ratio to bare | p50 | p99 | gateway CPU/req | added over bare | Redis CPU/req "
        "| Redis CPU/admitted | Redis ops/req | cmds sent/req | gateway busy | non-2xx | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, res in http["arms"].items():
        if "rps" not in res:
            out.append(f"| {arm} | failed: {res.get('error', '?')} ||||||||||||||")
            continue
        added = "" if arm == "bare" else _fmt(res["gateway_cpu_added_us"], "+.0f", " µs")
        out.append(
            f"| {arm} | {res['rps']:.0f} | {_fmt(res['ratio'], '.2f')} "
            f"| {res['p50_ms']:.2f} ms | {res['p99_ms']:.2f} ms "
            f"| {_fmt(res['gateway_cpu_us'], '.0f', ' µs')} | {added} "
            f"| {_fmt(res['redis_cpu_us'], '.1f', ' µs')} | {_fmt(res['redis_cpu_admitted_us'], '.1f', ' µs')} "
            f"| {_fmt(res['server_ops_per_req'], '.2f')} | {_fmt(res['cmds_per_req'], '.3f')} "
            f"| {_fmt(res['gateway_busy'], '.2f')} | {res['non_2xx']} | {res['errors']} |"
        )
    out.append("")
    serve = http["arms"].get("mg-serve", {})
    if isinstance(serve.get("vs_mg_exact"), int | float):
        out.append(
            f"`meterguard serve` (mg-serve) against the same gateway under the harness's uvicorn call (mg-exact): "
            f"{serve['vs_mg_exact']:.2f} of its requests/s, gateway CPU "
            f"{_fmt(serve.get('cpu_vs_mg_exact_us'), '+.0f', ' µs')} per request."
        )
        out.append("")
    for arm, res in http["arms"].items():
        base, _, revision = arm.partition("@")
        if revision and isinstance(res.get("current_vs_baseline"), int | float):
            out.append(
                f"{base} against {arm} ({_served_by(revision)}): "
                f"{res['current_vs_baseline']:.2f} of its requests/s, gateway CPU "
                f"{_fmt(res.get('current_cpu_vs_baseline_us'), '+.0f', ' µs')} per request, Redis CPU "
                f"{_fmt(res.get('current_redis_vs_baseline_us'), '+.1f', ' µs')} per admitted request."
            )
            out.append("")
    for field, title in (
        ("commands", "Redis operations per request by command, server side (commands inside scripts included):"),
        ("sent", "Redis commands sent per request by command, gateway side:"),
    ):
        breakdown = _breakdown(http["arms"], field)
        if breakdown:
            out.extend([title, "", *breakdown, ""])
    failed = [f"- {arm}: {res['error']}" for arm, res in http["arms"].items() if "rps" in res and "error" in res]
    if failed:
        out.extend(["Arms that failed in some round (figures from the rounds that ran):", "", *failed, ""])
    return out


def _inprocess_section(inprocess: dict[str, Any]) -> list[str]:
    out = [
        f"### In-process: raw ASGI, no HTTP, {inprocess['concurrency']} tasks on uvloop, "
        f"{inprocess['requests']} requests per arm and round, {_plural(inprocess['rounds'], 'round')}",
        "",
        "Microseconds of wall time per request with 32 in flight (Redis round trips included); the median "
        "over rounds. The overhead is the median over rounds of (arm - bare) within the round.",
        "",
        "| arm | µs/request | overhead over bare | cmds sent/req | non-200 |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, res in inprocess["arms"].items():
        if "us" not in res:
            out.append(f"| {arm} | failed: {res.get('error', '?')} ||||")
            continue
        overhead = "" if arm == "bare" else _fmt(res["overhead_us"], "+.1f", " µs")
        cmds = _fmt(res.get("cmds_per_req"), ".3f")
        out.append(f"| {arm} | {res['us']:.1f} | {overhead} | {cmds} | {res['non_200']} |")
    out.append("")
    breakdown = _breakdown(inprocess["arms"], "sent")
    if breakdown:
        out.extend(["Redis commands sent per request, by command (all rounds):", "", *breakdown, ""])
    return out


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
