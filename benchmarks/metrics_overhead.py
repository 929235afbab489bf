"""What metrics and log context cost one request: ``python -m benchmarks.metrics_overhead``.

Times, per request, exactly the calls the middleware makes for an admitted request that returns
records: the log context (begin + principal), the outcome count, an auth cache hit, the records
count, and one store call with its batch size (the worst case: a batch of one, as at low
concurrency). The same work done with prometheus_client children directly is timed beside it.
"""

from __future__ import annotations

import timeit
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

from meterguard.logs import begin
from meterguard.metrics import Metrics

N = 200_000


@dataclass(frozen=True)
class _Decision:
    admitted: bool = True
    replay: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class _Principal:
    customer: str = "acme"
    key_id: str = "key_1"
    plan: str = "pro"


def main() -> None:
    metrics, decision, principal = Metrics(multiprocess_dir=""), _Decision(), _Principal()

    def meterguard() -> None:
        context = begin("GET", "/v1/posts/search", None)
        context.principal = principal
        metrics.auth_hits += 1
        metrics.decided(principal.plan, decision)
        metrics.store_call("batch", 0.00007, 1)
        metrics.billed("pro", 10)

    def counts_only() -> None:
        metrics.auth_hits += 1
        metrics.decided(principal.plan, decision)
        metrics.store_call("batch", 0.00007, 1)
        metrics.billed("pro", 10)

    def nothing() -> None:
        pass

    registry = CollectorRegistry()
    requests = Counter("r", "r", ["plan", "outcome"], registry=registry).labels("pro", "admitted")
    hits = Counter("h", "h", ["result"], registry=registry).labels("hit")
    records = Counter("c", "c", ["plan"], registry=registry).labels("pro")
    store = Histogram("s", "s", ["operation"], registry=registry).labels("batch")
    batch = Histogram("b", "b", registry=registry)

    def direct() -> None:
        hits.inc()
        requests.inc()
        store.observe(0.00007)
        batch.observe(1)
        records.inc(10)

    arms = (
        ("meterguard: metrics + log context", meterguard),
        ("meterguard: metrics only", counts_only),
        ("the same with prometheus_client", direct),
        ("an empty call (subtract it)", nothing),
    )
    for name, work in arms:
        best = min(timeit.repeat(work, number=N, repeat=7)) / N
        print(f"{name:40s} {best * 1e6:6.2f} us per request")


if __name__ == "__main__":
    main()
