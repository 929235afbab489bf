"""Load for gateway fault tests: K keep-alive connections, paced requests, every outcome kept.

A fault test runs this against a gateway while it breaks Redis, then compares what clients
were served (complete 200s and the records in them) with the usage Redis recorded. Built on
tests/wave.py's h11 ``Connection``; a connection that fails is replaced by a new one and the
load goes on.

    result = await drive(gateway.port, [("acme", key)], "/v1/posts/1?n=3", seconds=5, rate=200)
    summary = result.summary()
    summary.customers["acme"].served, summary.customers["acme"].records, summary.statuses[503]
    result.summary(since=redis_back_at + 1).statuses[503] == 0

``drive`` is a coroutine (run it as a task in the test's loop); ``BackgroundLoad`` runs it in a
thread of its own, so that a test may block (a restart, a reshard) while requests flow.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import h11

from .wave import Connection, IncompleteReply, Reply

# Why a request got no complete reply: the server reset the connection, no reply within the
# timeout, the connection closed mid-reply, no connection could be made, or the reply was not HTTP.
ERRORS = ("reset", "timeout", "incomplete", "refused", "protocol")
RECONNECT_PAUSE = 0.05  # after a failed connect, so that a gateway that is down is not spun on


@dataclass(frozen=True)
class Outcome:
    """One request. ``status`` is 0 when no status line arrived; ``records`` counts the ``data``
    array of a complete 200 (or the top-level array); ``error`` is one of ERRORS or None."""

    customer: str
    sent_at: float  # time.monotonic() when it was written (or its connection attempted)
    latency: float
    status: int = 0
    records: int = 0
    error: str | None = None

    @property
    def served(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class Tally:
    """One customer's outcomes: ``served`` = complete 200s, ``records`` = records in them."""

    served: int = 0
    records: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    cut_off_200s: int = 0  # 200s whose body never arrived whole: served or not, the client can't tell


@dataclass(frozen=True)
class Summary:
    requests: int
    statuses: Counter[int]  # complete replies only
    errors: Counter[str]
    customers: dict[str, Tally]
    latencies: tuple[float, ...]  # sorted, of complete replies

    @property
    def served(self) -> int:
        return sum(tally.served for tally in self.customers.values())

    @property
    def records(self) -> int:
        return sum(tally.records for tally in self.customers.values())

    def latency(self, quantile: float) -> float:
        """Nearest-rank quantile of the latencies of complete replies (0.0 when there are none)."""
        if not self.latencies:
            return 0.0
        rank = max(1, -(-len(self.latencies) * quantile // 1))  # ceil(n * q), at least 1
        return self.latencies[min(len(self.latencies), int(rank)) - 1]


def summarize(outcomes: Iterable[Outcome]) -> Summary:
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    customers: dict[str, Tally] = {}
    latencies = []
    count = 0
    for outcome in outcomes:
        count += 1
        tally = customers.setdefault(outcome.customer, Tally())
        if outcome.error is None:
            statuses[outcome.status] += 1
            tally.statuses[outcome.status] += 1
            latencies.append(outcome.latency)
            if outcome.status == 200:
                tally.served += 1
                tally.records += outcome.records
        else:
            errors[outcome.error] += 1
            tally.errors[outcome.error] += 1
            if outcome.status == 200:
                tally.cut_off_200s += 1
    return Summary(count, statuses, errors, customers, tuple(sorted(latencies)))


@dataclass
class LoadResult:
    outcomes: list[Outcome]
    started: float
    ended: float

    def summary(self, since: float | None = None, until: float | None = None) -> Summary:
        """Of the requests sent at ``since`` or later (and before ``until``), monotonic times."""
        return summarize(
            outcome for outcome in self.outcomes
            if (since is None or outcome.sent_at >= since) and (until is None or outcome.sent_at < until)
        )  # fmt: skip

    @property
    def rate(self) -> float:
        return len(self.outcomes) / (self.ended - self.started) if self.ended > self.started else 0.0


def count_records(body: bytes) -> int:
    try:
        document = json.loads(body)
    except ValueError:
        return 0
    data = document.get("data") if isinstance(document, dict) else document
    return len(data) if isinstance(data, list) else 0


async def drive(
    port: int,
    clients: Sequence[tuple[str, str]],
    path: str | Sequence[str],
    *,
    connections: int = 8,
    requests: int | None = None,
    seconds: float | None = None,
    rate: float | None = None,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
    stop: threading.Event | None = None,
) -> LoadResult:
    """Send ``requests`` requests, or requests for ``seconds``, over ``connections`` keep-alive
    connections, at about ``rate`` per second in total (as fast as they go without it).

    Request i goes to ``clients[i % len(clients)]`` = (customer, api key) with its key in
    ``x-api-key``, on ``path`` (or ``path[i % len(path)]``). Request i is due at start + i/rate;
    a connection sends the next due request once it has its previous reply, so with too few
    connections for the rate the load runs behind (see ``LoadResult.rate``). ``stop`` ends it
    early: no new request is sent, those in flight finish.
    """
    if requests is None and seconds is None:
        raise ValueError("give requests=N or seconds=D")
    if not clients:
        raise ValueError("no clients")
    paths = [path] if isinstance(path, str) else list(path)
    extra = dict(headers or {})
    started = time.monotonic()
    indexes = itertools.count()
    outcomes: list[Outcome] = []

    def next_due() -> tuple[int, float] | None:
        i = next(indexes)
        due = started + i / rate if rate else time.monotonic()
        if (requests is not None and i >= requests) or (seconds is not None and due >= started + seconds):
            return None
        if stop is not None and stop.is_set():
            return None
        return i, due

    async def worker() -> None:
        conn: Connection | None = None
        try:
            while (item := next_due()) is not None:
                i, due = item
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                customer, key = clients[i % len(clients)]
                sent = time.monotonic()
                if conn is None:
                    conn, error = await _connect(host, port, timeout)
                    if conn is None:
                        outcomes.append(Outcome(customer, sent, time.monotonic() - sent, error=error))
                        await asyncio.sleep(RECONNECT_PAUSE)
                        continue
                outcome = await _request(conn, customer, key, paths[i % len(paths)], extra, sent, timeout)
                outcomes.append(outcome)
                if outcome.error is not None or not conn.idle:
                    await conn.close()
                    conn = None
        finally:
            if conn is not None:
                await conn.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    outcomes.sort(key=lambda outcome: outcome.sent_at)
    return LoadResult(outcomes, started, time.monotonic())


async def _connect(host: str, port: int, timeout: float) -> tuple[Connection | None, str]:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except TimeoutError:
        return None, "timeout"
    except ConnectionRefusedError:
        return None, "refused"
    except OSError:
        return None, "reset"
    return Connection(reader, writer, f"{host}:{port}"), ""


async def _request(
    conn: Connection, customer: str, key: str, path: str, headers: dict[str, str], sent: float, timeout: float
) -> Outcome:
    def failed(error: str, status: int = 0) -> Outcome:
        return Outcome(customer, sent, time.monotonic() - sent, status=status, error=error)

    try:
        conn.writer.write(conn.request_bytes(path, {"x-api-key": key, **headers}))
        reply = await asyncio.wait_for(_written_and_read(conn), timeout)
    except TimeoutError:
        return failed("timeout")
    except IncompleteReply as exc:
        return failed("incomplete", exc.status)
    except h11.ProtocolError:
        return failed("protocol")
    except OSError:  # ConnectionResetError, BrokenPipeError, ...
        return failed("reset")
    records = count_records(reply.body) if reply.status == 200 else 0
    return Outcome(customer, sent, time.monotonic() - sent, reply.status, records)


async def _written_and_read(conn: Connection) -> Reply:
    await conn.writer.drain()
    return await conn.read_reply()


class BackgroundLoad:
    """``drive(...)`` in a thread with its own event loop, so the test may block meanwhile.

        with BackgroundLoad(port, clients, "/v1/posts/1?n=3", seconds=6, rate=200) as load:
            server.kill(); time.sleep(1); server.restart()
        result = load.result()

    Leaving the ``with`` block waits for the load to end (``stop()`` first to end it early).
    """

    def __init__(self, port: int, clients: Sequence[tuple[str, str]], path: str | Sequence[str], **options: object):
        self._args = (port, clients, path)
        self._options = options
        self._stop = threading.Event()
        self._result: LoadResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="background-load", daemon=True)

    def _run(self) -> None:
        try:
            self._result = asyncio.run(drive(*self._args, stop=self._stop, **self._options))  # type: ignore[arg-type]
        except BaseException as exc:  # handed to the test's thread by result()
            self._error = exc

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No new request from now on; those in flight finish."""
        self._stop.set()

    def result(self, timeout: float | None = None) -> LoadResult:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("load still running")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.stop()  # the test failed: don't make it wait for the rest of the load
        self._thread.join()
