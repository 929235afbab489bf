"""The Redis store: every decision is one Lua script, atomic on the server.

Layout (``mg`` is the key prefix; ``<c>`` the customer id, percent-encoded so that ``{``, ``}``
and ``:`` in an id can neither break the hash tag nor collide with another customer's keys)::

    mg:{c:<c>}:p:<period>     hash  calls, records, x:<reason> (rejected), r:c:<route>, r:r:<route>,
                                    k:c:<key_id>, k:r:<key_id>, u:<label> + un (unlisted routes seen)
    mg:{c:<c>}:d:<YYYY-MM-DD> hash  the same, per day
    mg:{c:<c>}:w:<window>     hash  slot index -> units (the current and the previous slot)
    mg:{c:<c>}:customer       hash  id, plan, status, anchor_day, created_at
    mg:{c:<c>}:keys           hash  key_id -> key hash
    mg:{c:<c>}:used           hash  key_id -> last used (epoch seconds)
    mg:customers              set   customer ids
    mg:key:<sha256>           hash  customer, key_id, prefix, created_at, revoked
    mg:keyid:<key_id>         hash  hash, customer

Every key of one customer shares the hash tag ``{c:<c>}``, so each script touches one slot and
runs unchanged on Redis Cluster. Counters get their expiry in the script that writes them
(an INCR and an EXPIRE in two round trips leave immortal keys after a crash, limits#14), and
the clock is the server's ``TIME``, never the gateways'.

Scripts are never retried blindly: the client is built with zero retries, so a timeout after
the server ran an admission cannot count it twice. NOSCRIPT (a restart or failover emptied
the script cache) means the script did not run; it is sent once more with EVAL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import quote

from ..errors import StoreError
from ..metrics import DISCARD, Metrics
from ..plans import Window
from ._batch import Batcher
from ._batch import Op as _Op
from ._redis_alerts import RedisAlerts
from ._redis_client import DEFAULT_TIMEOUT_SECONDS, load_script, no_retry, translated
from ._redis_directory import RedisDirectory
from ._redis_events import RedisEvents
from .base import (
    MAX_UNLISTED_ROUTES,
    OTHER_ROUTE,
    AdmitRequest,
    Counts,
    DayUsage,
    Decision,
    Flush,
    Meter,
    Reason,
    Settlement,
    Usage,
    WindowState,
)

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "PERIOD_AUDIT_SECONDS", "RedisStore", "no_retry"]

DAY = 86_400
PERIOD_AUDIT_SECONDS = 400 * DAY  # period counters outlive the period end this long, for audits
DAY_TTL_SECONDS = 400 * DAY  # daily counters, from their last write
WINDOW_SLACK_SECONDS = 60  # windows live 2 x their length (the sliding estimate reads 2 slots) + this
IDEMPOTENCY_TTL_SECONDS = DAY  # a retry within 24 h of an admitted request is not billed again

METER = load_script("meter")
# The first element of every METER batch: settings of the whole batch, not repeated per operation.
_BATCH_SETTINGS = (
    PERIOD_AUDIT_SECONDS,
    DAY_TTL_SECONDS,
    MAX_UNLISTED_ROUTES,
    OTHER_ROUTE,
    WINDOW_SLACK_SECONDS,
    IDEMPOTENCY_TTL_SECONDS,
)


def _meter(meter: Meter) -> list[Any]:
    return [
        -1 if meter.included is None else meter.included,
        meter.unit,
        [[-1 if up_to is None else up_to, price] for up_to, price in meter.tiers],
    ]


def _counter(window: Window) -> str:
    return quote(window.counter, safe="")


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def _counts(fields: Mapping[str, str], prefix: str) -> dict[str, Counts]:
    """``r:c:<name>`` / ``r:r:<name>`` (or ``k:``) fields as ``{name: Counts}``."""
    table: dict[str, list[int]] = {}
    calls_prefix, records_prefix = f"{prefix}:c:", f"{prefix}:r:"
    for field, value in fields.items():
        if field.startswith(calls_prefix):
            table.setdefault(field[len(calls_prefix) :], [0, 0])[0] = int(value)
        elif field.startswith(records_prefix):
            table.setdefault(field[len(records_prefix) :], [0, 0])[1] = int(value)
    return {name: Counts(calls, records) for name, (calls, records) in table.items()}


class RedisStore(RedisDirectory, RedisEvents, RedisAlerts):
    """Store on one Redis server: ``redis://host:port/db`` or ``rediss://`` (TLS).

    Nothing connects at construction; the first command does. Query parameters of the URL
    (``socket_timeout``, ``max_connections``, ...) are passed to redis-py.
    """

    metrics: Metrics = DISCARD  # a MeterGuard gives it its own

    def __init__(self, url: str, *, key_prefix: str = "mg") -> None:
        super().__init__(url, key_prefix=key_prefix)
        self._batcher = Batcher(self._run, self._slot)

    def _slot(self, op: _Op) -> int:
        """Operations that may share one script call: all of them on a single server."""
        return 0

    # metering -------------------------------------------------------------------------------------

    async def admit(self, request: AdmitRequest) -> Decision:
        tag = self._tag(request.customer)
        op: list[Any] = [
            "A",
            request.customer,
            request.period_id,
            request.day,
            request.weight,
            1 if request.strategy == "sliding" else 0,
            request.route,
            1 if request.listed else 0,
            request.key_id,
            request.period_end,
            -1 if request.spend_cap_cents is None else request.spend_cap_cents,
            request.lease,
            request.idempotency_key or "",
            _meter(request.calls),
            _meter(request.records),
            [[_counter(window), window.limit, window.seconds] for window in request.windows],
        ]
        reply, now = await self._batcher.submit(_Op("A", [tag], op))
        (admitted, reason, violated_windows, calls_violated, records_violated, retry_after,
         remaining, resets, calls_used, records_used, spend, granted, replay, slots) = reply  # fmt: skip
        violated = [request.windows[int(index) - 1].name for index in violated_windows]
        if int(calls_violated):
            violated.append("calls-period")
        if int(records_violated):
            violated.append("records-period")
        states = tuple(
            WindowState(window, int(left), float(reset))
            for window, left, reset in zip(request.windows, remaining, resets, strict=True)
        )
        return Decision(
            admitted=int(admitted) == 1,
            reason=cast(Reason, reason) if reason else None,
            violated=tuple(violated),
            retry_after=float(retry_after),
            windows=states,
            calls_used=int(calls_used),
            records_used=int(records_used),
            spend_cents=int(spend),
            now=now,
            granted=int(granted),
            replay=int(replay) == 1,
            slots=tuple(int(slot) for slot in slots),
        )

    async def settle(self, settlement: Settlement) -> None:
        if settlement.records <= 0:
            return
        op: list[Any] = [
            "S",
            settlement.customer,
            settlement.period_id,
            settlement.day,
            settlement.records,
            settlement.route,
            1 if settlement.listed else 0,
            settlement.key_id,
            settlement.period_end,
        ]
        await self._batcher.submit(_Op("S", [self._tag(settlement.customer)], op))

    async def flush(self, flush: Flush) -> None:
        op: list[Any] = [
            "F",
            flush.customer,
            flush.period_id,
            flush.day,
            flush.period_end,
            flush.consumed,
            flush.returned,
            [[row.route, 1 if row.listed else 0, row.key_id, row.calls, row.records] for row in flush.rows],
            [[_counter(window), slot, units] for window, slot, units in flush.windows],
        ]
        await self._batcher.submit(_Op("F", [self._tag(flush.customer)], op))

    async def _run(self, ops: Sequence[_Op]) -> tuple[list[Any], float]:
        """One METER call for ``ops`` (all of one hash slot on a cluster)."""
        keys = [op.keys[0] for op in ops]
        payload = json.dumps([_BATCH_SETTINGS, *(op.args for op in ops)], separators=(",", ":"))
        started = time.perf_counter()
        reply = await self._script(METER, keys, [payload])
        self.metrics.store_call("batch", time.perf_counter() - started, len(ops))
        sec, usec, *results = reply
        # The script's `now`, computed the same way as in the script.
        return results, int(sec) + int(usec) / 1_000_000

    async def usage(self, customer: str, period_id: str) -> Usage:
        with translated():
            fields: dict[str, str] = await self._client().hgetall(self._period_key(customer, period_id))
        if not fields:
            return Usage()
        rejected = {field[2:]: int(value) for field, value in fields.items() if field.startswith("x:")}
        return Usage(
            calls=_int(fields.get("calls")),
            records=_int(fields.get("records")),
            rejected=rejected,
            by_route=_counts(fields, "r"),
            by_key=_counts(fields, "k"),
            replays=_int(fields.get("replays")),
        )

    async def daily(self, customer: str, days: list[str]) -> list[DayUsage]:
        if not days:
            return []
        with translated():
            async with self._client().pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(self._day_key(customer, day))
                replies: list[dict[str, str]] = await pipe.execute()
        return [
            DayUsage(
                day,
                _int(fields.get("calls")),
                _int(fields.get("records")),
                _counts(fields, "r"),
                _counts(fields, "k"),
            )
            for day, fields in zip(days, replies, strict=True)
        ]

    # lifecycle ------------------------------------------------------------------------------------

    async def diagnose(self) -> list[str]:
        """Settings that lose usage: no AOF (a restart forgets it), key eviction (under-billing).

        Managed Redis services often refuse CONFIG; then nothing can be said and nothing is.
        """
        try:
            with translated():
                config = await self._client().config_get("appendonly")
                config.update(await self._client().config_get("maxmemory-policy"))
        except StoreError:
            return []
        warnings = []
        if config.get("appendonly") != "yes":
            warnings.append("Redis runs without appendonly (AOF): a Redis restart loses usage since its last snapshot")
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            warnings.append(f"Redis maxmemory-policy is {policy}: evicted counters are usage that is never billed")
        return warnings

    async def ping(self) -> None:
        with translated():
            await self._client().ping()

    async def aclose(self) -> None:
        await self._batcher.drain()
        self._closed = True
        # Running watch() loops notice within a poll and close their own connections; only then
        # is the client closed under them (see watch()).
        await self._stop_watching()
        client, self._redis = self._redis, None
        if client is not None:
            with translated():
                await client.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._safe_url()!r})"

    def _safe_url(self) -> str:
        # never show a password from the URL
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return f"{scheme}{sep}{rest}"
