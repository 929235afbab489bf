"""Prometheus metrics of one MeterGuard: what the gateway decided, what the store cost, what was sent.

The request path never touches prometheus_client: one ``prometheus_client`` counter increment
costs about 1 us here (2 us in multiprocess mode, where every increment writes an mmap file)
and a histogram observation 1.5 us (4.6 us), so a request that counts its outcome, an auth
cache hit and a store round trip would cost 3 to 9 us. Instead the request path adds to plain
ints held by a :class:`Metrics` (a dict increment, about 0.1 us, measured in
benchmarks/metrics_overhead.py), and the numbers are handed to prometheus_client objects when
they are read: at every scrape, and once a second in multiprocess mode. The exposition itself is
prometheus_client's (text format, families, multiprocess aggregation); nothing here writes it.

One :class:`Metrics` per MeterGuard, with a registry of its own: tests and applications may
build many MeterGuards in one process, and each scrape shows its own gateway's numbers.

Several workers (``meterguard serve --workers N``, gunicorn, ...) share one listening socket, so a
scrape reaches one worker at random: per-worker exposition would show a different worker's
numbers each time. meterguard uses prometheus_client's multiprocess mode instead: when
``PROMETHEUS_MULTIPROC_DIR`` is set (``meterguard serve --workers N`` sets it to a fresh
directory), every worker copies its numbers into its own files in that directory once a second
and at shutdown, and a scrape of any worker sums the files of all of them. Counts of a worker
that was restarted stay in the sum (counters never go down); the gauges are of live workers
only. Numbers of another worker are at most :data:`SYNC_SECONDS` old.

The ledger feeds ``spool_depth``: ``metrics.spool_depth.set(n)`` with the number of settlements
waiting for the store (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from .logs import RequestContext


class _Decision(Protocol):
    @property
    def admitted(self) -> bool: ...
    @property
    def replay(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...


__all__ = ["CONTENT_TYPE", "DISCARD", "OUTCOMES", "Buckets", "Level", "Metrics"]

log = logging.getLogger("meterguard.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SYNC_SECONDS = 1.0

#: ``outcome`` label values of meterguard_requests_total (CONTRACT 11, plus ``invalid`` for a 400
#: and ``unmetered`` for a request served without metering under ``on_store_error: fail_open``).
OUTCOMES = (
    "admitted",
    "replayed",
    "rate_limited",
    "quota",
    "spend_cap",
    "unauthenticated",
    "forbidden",
    "store_unavailable",
    "invalid",
    "unmetered",
)
_BY_STATUS = {401: "unauthenticated", 403: "forbidden", 503: "store_unavailable", 402: "spend_cap"}
# Redis on loopback answers a script in 50-100 us; a slow or remote one in milliseconds.
STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)  # store/_batch.py sends at most 64 operations


class Buckets:
    """A histogram's counts as plain ints: ``observe`` costs a bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf; not cumulative
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class Level:
    """A gauge as a plain number (``set``, ``inc``, ``dec``), read at scrape time."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class Metrics:
    """Every number one MeterGuard exposes at ``{admin.path}/metrics``; see the module docstring.

    The gateway's parts write the public attributes directly; they are plain ints and dicts.
    """

    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self.requests: dict[tuple[str, str], int] = {}  # (plan, outcome) -> requests
        self.records: dict[str, int] = {}  # plan -> records billed
        self.uncounted: dict[str, int] = {}  # plan -> responses whose records could not be counted
        self.store_seconds: dict[str, Buckets] = {}  # operation -> latencies
        self.batch_sizes = Buckets(BATCH_BUCKETS)  # operations per store script call
        self.auth_hits = 0  # credentials answered from the process's cache
        self.auth_misses = 0  # ... that needed a store lookup or a JWT verification
        self.leases = 0  # fast path: leases granted
        self.lease_units = 0  # units in them
        self.lease_returned = 0  # units given back unused
        self.alerts: dict[str, int] = {}  # delivered | failed (retried) | given_up -> webhook attempts
        self.reloads: dict[str, int] = {}  # ok | failed -> plans.yaml reloads
        self.spool_depth = Level()  # settlements waiting for the store (fed by the ledger)
        self._dir = (multiprocess_dir if multiprocess_dir is not None else os.environ.get(MULTIPROC_ENV)) or None
        self._exported: _Exported | None = None
        self._syncer: asyncio.Task[None] | None = None

    # the request path -----------------------------------------------------------------------------

    def count(self, plan: str, outcome: str) -> None:
        key = (plan, outcome)
        self.requests[key] = self.requests.get(key, 0) + 1

    def decided(self, plan: str, decision: _Decision) -> None:
        # Inlined (no call to count): this runs for every metered request.
        if decision.admitted:
            key = (plan, "replayed" if decision.replay else "admitted")
        else:
            key = (plan, decision.reason or "rate_limited")
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1

    def refused(self, context: RequestContext | None, status: int) -> None:
        """A refusal answered by the gateway, by status. 402 and 429 after a decision were counted
        with it (:meth:`decided`); a 429 before any is too many failed authentications."""
        principal = context.principal if context is not None else None
        if principal is not None and status in (402, 429):
            return
        outcome = "unauthenticated" if status == 429 else _BY_STATUS.get(status, "invalid")
        self.count(principal.plan if principal is not None else "", outcome)

    def billed(self, plan: str, records: int) -> None:
        self.records[plan] = self.records.get(plan, 0) + records

    def not_counted(self, plan: str) -> None:
        self.uncounted[plan] = self.uncounted.get(plan, 0) + 1

    def store_call(self, operation: str, seconds: float, batch: int = 0) -> None:
        buckets = self.store_seconds.get(operation)
        if buckets is None:
            buckets = self.store_seconds[operation] = Buckets(STORE_BUCKETS)
        buckets.observe(seconds)
        if batch:
            self.batch_sizes.observe(batch)

    def alert(self, result: str) -> None:
        self.alerts[result] = self.alerts.get(result, 0) + 1

    def reloaded(self, ok: bool) -> None:
        result = "ok" if ok else "failed"
        self.reloads[result] = self.reloads.get(result, 0) + 1

    # exposition -----------------------------------------------------------------------------------

    @property
    def multiprocess(self) -> bool:
        return self._dir is not None

    def exposition(self) -> bytes:
        """The Prometheus text format: this process's numbers, or in multiprocess mode every worker's."""
        exported = self.sync()
        if self._dir is None:
            return generate_latest(exported.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    def sync(self) -> _Exported:
        """Hand what was counted since the last sync to the prometheus_client objects."""
        if self._exported is None:
            self._exported = _Exported(multiprocess=self._dir is not None)
        self._exported.update(self)
        return self._exported

    def start(self) -> None:
        """In multiprocess mode, sync once a second in the running loop, so other workers' scrapes see it."""
        if self._dir is not None and self._syncer is None:
            self._syncer = asyncio.ensure_future(self._sync_forever())

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - a full disk must not end the loop; the next tick retries
                log.exception("could not write the metrics of this worker to %s", self._dir)

    async def aclose(self) -> None:
        """Last sync (multiprocess mode), so that a stopped worker's counts stay in the sum."""
        if self._syncer is not None:
            self._syncer.cancel()
            await asyncio.gather(self._syncer, return_exceptions=True)
            self._syncer = None
        if self._dir is not None and self._exported is not None:
            self.sync()
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self._dir)  # type: ignore[no-untyped-call]


#: Where the parts of a gateway count before a MeterGuard gives them its own Metrics (nobody reads it).
DISCARD = Metrics(multiprocess_dir="")


class _Exported:
    """prometheus_client objects mirroring a Metrics, and what they were last told (for deltas)."""

    def __init__(self, *, multiprocess: bool) -> None:
        # In multiprocess mode the objects write this process's files and are read back from there by
        # MultiProcessCollector, so they must not be registered anywhere themselves.
        self.registry = CollectorRegistry()
        registry = None if multiprocess else self.registry
        self.requests = Counter(
            "meterguard_requests",
            "Requests the gateway decided, by the customer's plan ('' when unknown) and outcome.",
            ["plan", "outcome"],
            registry=registry,
        )
        self.records = Counter("meterguard_records", "Records served and billed, by plan.", ["plan"], registry=registry)
        self.uncounted = Counter(
            "meterguard_uncounted_responses",
            "Responses whose records could not be counted (body over records.max_body_bytes), by plan.",
            ["plan"],
            registry=registry,
        )
        self.store_seconds = Histogram(
            "meterguard_store_seconds",
            "Time of one store call, by operation (batch: one metering script call).",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=registry,
        )
        self.batch_sizes = Histogram(
            "meterguard_batch_size",
            "Metering operations per store script call.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.auth_cache = Counter(
            "meterguard_auth_cache",
            "Credential lookups answered from the process's cache (hit) or not (miss).",
            ["result"],
            registry=registry,
        )
        self.leases = Counter("meterguard_leases", "Fast path: leases granted.", registry=registry)
        self.lease_units = Counter(
            "meterguard_lease_units",
            "Fast path: units leased (granted) and given back unused (returned).",
            ["event"],
            registry=registry,
        )
        self.alerts = Counter(
            "meterguard_alert_deliveries",
            "Webhook delivery attempts, by result (delivered, failed and retried, given_up).",
            ["result"],
            registry=registry,
        )
        self.reloads = Counter("meterguard_reloads", "plans.yaml reloads, by result.", ["result"], registry=registry)
        self.spool_depth = Gauge(
            "meterguard_spool_depth",
            "Settlements waiting for the store to come back.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._seen: dict[tuple[str, Any], float] = {}

    def _delta(self, name: str, key: Any, value: float) -> float:
        seen = self._seen.get((name, key), 0)
        self._seen[(name, key)] = value
        return value - seen

    def _counters(self, name: str, metric: Counter, table: Iterable[tuple[Any, float]]) -> None:
        for key, value in table:
            delta = self._delta(name, key, value)
            if delta > 0:
                labels = key if isinstance(key, tuple) else (key,)
                metric.labels(*labels).inc(delta)

    def _histogram(self, name: str, metric: Histogram, buckets: Buckets) -> None:
        # prometheus_client adds bucket counts only one observation at a time; the child's bucket
        # and sum values are added to directly (its own observe() does the same, per observation).
        changed = False
        for index, count in enumerate(buckets.counts):
            delta = self._delta(name, index, count)
            if delta:
                metric._buckets[index].inc(delta)
                changed = True
        if changed:
            metric._sum.inc(self._delta(name, "sum", buckets.sum))

    def update(self, metrics: Metrics) -> None:
        self._counters("requests", self.requests, list(metrics.requests.items()))
        self._counters("records", self.records, list(metrics.records.items()))
        self._counters("uncounted", self.uncounted, list(metrics.uncounted.items()))
        for operation, buckets in list(metrics.store_seconds.items()):
            self._histogram(f"store:{operation}", self.store_seconds.labels(operation), buckets)
        self._histogram("batch", self.batch_sizes, metrics.batch_sizes)
        self._counters("auth", self.auth_cache, [("hit", metrics.auth_hits), ("miss", metrics.auth_misses)])
        if metrics.leases:
            self.leases.inc(self._delta("leases", None, metrics.leases) or 0)
        self._counters(
            "lease_units", self.lease_units, [("granted", metrics.lease_units), ("returned", metrics.lease_returned)]
        )
        self._counters("alerts", self.alerts, list(metrics.alerts.items()))
        self._counters("reloads", self.reloads, list(metrics.reloads.items()))
        self.spool_depth.set(metrics.spool_depth.value)
