"""From raw counts to the figures that decide, and each target met or not (BENCHMARKS.md).

Pure functions, no I/O, so that tests/test_bench_plumbing.py can feed them synthetic rounds:

- ``window_figures``: one arm in one round, per request, from what wrk, /proc and Redis's INFO
  counted over the measured window;
- ``aggregate``: every arm over the rounds: each figure is the median over rounds, and every
  comparison with another arm (ratio to bare, CPU added over bare, vs slowapi, ...) is taken
  within a round first, then the median, so that a slow round does not favour the arms it hit;
- ``targets``: the rows of BENCHMARKS.md's "Targets", each with the measured value and a verdict.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Sample = dict[str, Any]


def window_figures(
    wrk: dict[str, Any],
    *,
    gateway_cpu: float,
    redis_cpu: float,
    calls: dict[str, int],
    sent: dict[str, int],
) -> Sample:
    """One measured window. ``wrk``: the MGBENCH summary of benchmarks/http.py's script; CPU in
    seconds; ``calls``: Redis commands the server ran (scripts' ``redis.call`` included);
    ``sent``: commands the gateway sent, counted in redis-py.

    A request is *admitted* when it got a 2xx/3xx: wrk counts every response of status 400 and
    above as a status error, and the arms answer 200 when they admit (429/402/401 otherwise).
    """
    done = wrk["requests"]
    refused = wrk["status"]
    admitted = done - refused

    def per(count: float, of: int = done, scale: float = 1.0) -> float | None:
        return scale * count / of if of else None

    return {
        "rps": done / (wrk["duration_us"] / 1e6),
        "requests": done,
        "admitted": admitted,
        "non_2xx": refused,
        "errors": sum(wrk[kind] for kind in ("connect", "read", "write", "timeout")),
        "p50_ms": wrk["p50_us"] / 1000,
        "p99_ms": wrk["p99_us"] / 1000,
        "gateway_cpu_us": per(gateway_cpu, scale=1e6),
        # CPUs the server kept busy over the window: near 1.0 (one worker) it is bound by its own
        # CPU; well below, by waiting (on Redis round trips, or on a core wrk or Redis holds)
        "gateway_busy": gateway_cpu / (wrk["duration_us"] / 1e6) if wrk["duration_us"] else None,
        "redis_cpu_us": per(redis_cpu, scale=1e6),
        "redis_cpu_admitted_us": per(redis_cpu, admitted, 1e6),
        "server_ops_per_req": per(sum(calls.values())),
        "commands": {name: count / done for name, count in sorted(calls.items())} if done else {},
        "cmds_per_req": per(sum(sent.values())),
        "sent": {name: count / done for name, count in sorted(sent.items())} if done else {},
    }


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def paired(mine: list[Sample], other: list[Sample], compare: Callable[[Sample, Sample], float | None]) -> float | None:
    """The median over rounds of ``compare(mine, other)``, each sample against the other arm's of its round."""
    by_round = {sample["round"]: sample for sample in other}
    return median([compare(sample, by_round[sample["round"]]) for sample in mine if sample["round"] in by_round])


def _ratio(field: str) -> Callable[[Sample, Sample], float | None]:
    def compare(a: Sample, b: Sample) -> float | None:
        return a[field] / b[field] if a[field] is not None and b[field] else None

    return compare


def _difference(field: str) -> Callable[[Sample, Sample], float | None]:
    def compare(a: Sample, b: Sample) -> float | None:
        return a[field] - b[field] if a[field] is not None and b[field] is not None else None

    return compare


def _mean_table(samples: list[Sample], field: str) -> dict[str, float]:
    table: dict[str, float] = {}
    for sample in samples:
        for name, value in sample[field].items():
            table[name] = table.get(name, 0.0) + value / len(samples)
    return table


MEDIANS = ("rps", "p50_ms", "p99_ms", "gateway_cpu_us", "redis_cpu_us", "redis_cpu_admitted_us",
           "server_ops_per_req", "cmds_per_req", "gateway_busy")  # fmt: skip


def aggregate(arms: list[str], per_round: dict[str, list[Sample]], errors: dict[str, str]) -> dict[str, Any]:
    """Every arm's figures over the rounds; samples carry ``round``. An arm without samples: its error."""
    bare = per_round.get("bare", [])
    results: dict[str, Any] = {}
    for arm in arms:
        samples = per_round.get(arm, [])
        if not samples:
            results[arm] = {"error": errors.get(arm, "no sample")}
            continue
        res: dict[str, Any] = {field: median([sample[field] for sample in samples]) for field in MEDIANS}
        res.update(
            ratio=paired(samples, bare, _ratio("rps")),
            gateway_cpu_added_us=paired(samples, bare, _difference("gateway_cpu_us")),
            vs_slowapi=paired(samples, per_round.get("slowapi", []), _ratio("rps")),
            vs_limits_aio=paired(samples, per_round.get("limits-aio", []), _ratio("rps")),
            requests=sum(sample["requests"] for sample in samples),
            admitted=sum(sample["admitted"] for sample in samples),
            non_2xx=sum(sample["non_2xx"] for sample in samples),
            errors=sum(sample["errors"] for sample in samples),
            rounds=len(samples),
            rounds_rps=[sample["rps"] for sample in samples],
            commands=_mean_table(samples, "commands"),
            sent=_mean_table(samples, "sent"),
        )
        base, _, revision = arm.partition("@")
        if revision:  # ARM served by an earlier revision of meterguard (MG_BENCH_BASELINE): ARM against it
            current = per_round.get(base, [])
            res["current_vs_baseline"] = paired(current, samples, _ratio("rps"))
            res["current_cpu_vs_baseline_us"] = paired(current, samples, _difference("gateway_cpu_us"))
            res["current_redis_vs_baseline_us"] = paired(current, samples, _difference("redis_cpu_admitted_us"))
        if arm == "mg-serve":  # the same gateway as mg-exact, started by `meterguard serve`
            exact = per_round.get("mg-exact", [])
            res["vs_mg_exact"] = paired(samples, exact, _ratio("rps"))
            res["cpu_vs_mg_exact_us"] = paired(samples, exact, _difference("gateway_cpu_us"))
            res["cpu_ratio_vs_mg_exact"] = paired(samples, exact, _ratio("gateway_cpu_us"))
        if arm in errors:
            res["error"] = errors[arm]
        results[arm] = res
    return results


# targets ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    figure: str
    arm: str
    field: str
    limit: float
    at_least: bool  # True: the measured value must be >= limit; False: <= limit
    unit: str  # "ratio", "x" (times) or "us"

    def format(self, value: float, extra_digits: int = 0) -> str:
        if self.unit == "us":
            return f"{value:.{1 + extra_digits}f} µs"
        text = f"{value:.{2 + extra_digits}f}"
        return f"{text}x" if self.unit == "x" else text

    def row(self, http: dict[str, Any] | None) -> tuple[str, str, str, str]:
        """(figure, measured, target, verdict)."""
        value = ((http or {}).get("arms", {}).get(self.arm) or {}).get(self.field)
        target = (">= " if self.at_least else "<= ") + self.format(self.limit)
        if not isinstance(value, int | float):
            return self.figure, "n/a", target, "not measured"
        met = value >= self.limit if self.at_least else value <= self.limit
        shown = self.format(value)
        if shown == self.format(self.limit) and value != self.limit:
            shown = self.format(value, extra_digits=2)  # 2.9993x, not a "3.00x" that is not met
        return self.figure, shown, target, "met" if met else "**not met**"


# BENCHMARKS.md, "Targets", in its order; every figure from the HTTP harness, medians of the rounds.
# fmt: off
TARGETS = (
    Target("mg-memory, HTTP ratio to bare", "mg-memory", "ratio", 0.65, True, "ratio"),
    Target("mg-fast, HTTP ratio to bare", "mg-fast", "ratio", 0.60, True, "ratio"),
    Target("mg-exact, HTTP ratio to bare", "mg-exact", "ratio", 0.45, True, "ratio"),
    Target("mg-memory, gateway CPU added per request", "mg-memory", "gateway_cpu_added_us", 40.0, False, "us"),
    Target("mg-fast, gateway CPU added per request", "mg-fast", "gateway_cpu_added_us", 45.0, False, "us"),
    Target("mg-exact, Redis CPU per admitted request", "mg-exact", "redis_cpu_admitted_us", 20.0, False, "us"),
    Target("mg-fast, Redis CPU per admitted request", "mg-fast", "redis_cpu_admitted_us", 3.0, False, "us"),
    Target("mg-fast vs slowapi, requests/s", "mg-fast", "vs_slowapi", 3.0, True, "x"),
    Target("mg-exact vs a minimal limits.aio middleware (2 windows), requests/s", "mg-exact", "vs_limits_aio", 1.0,
           True, "x"),
    # "Within 5%" of the same gateway under the harness's uvicorn call, in both figures: on a saturated
    # machine requests/s hides part of a CPU difference, which the issue measured (+50 µs per request).
    Target("`meterguard serve` vs the same app under plain uvicorn: requests/s (mg-serve / mg-exact)",
           "mg-serve", "vs_mg_exact", 0.95, True, "ratio"),
    Target("`meterguard serve` vs the same app under plain uvicorn: gateway CPU per request (mg-serve / mg-exact)",
           "mg-serve", "cpu_ratio_vs_mg_exact", 1.05, False, "ratio"),
)
# fmt: on


def targets(http: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, verdict) for every row of BENCHMARKS.md's targets table."""
    return [target.row(http) for target in TARGETS]
