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

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from typing import Any, cast
from urllib.parse import quote

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import CustomerExists, StoreError, StoreUnavailable
from ..plans import Window
from ._batch import Batcher
from ._batch import Op as _Op
from ._redis_alerts import RedisAlerts
from .base import (
    MAX_UNLISTED_ROUTES,
    OTHER_ROUTE,
    AdmitRequest,
    Counts,
    CustomerRecord,
    DayUsage,
    Decision,
    Flush,
    KeyRecord,
    Meter,
    Reason,
    Settlement,
    Usage,
    WindowState,
)

log = logging.getLogger("meterguard.store")

DAY = 86_400
WATCH_BACKOFF_MAX_SECONDS = 5.0
WATCH_PING_SECONDS = 5.0
WATCH_POLL_SECONDS = 0.2  # how soon a watch() loop sees that the store closed
PERIOD_AUDIT_SECONDS = 400 * DAY  # period counters outlive the period end this long, for audits
DAY_TTL_SECONDS = 400 * DAY  # daily counters, from their last write
WINDOW_SLACK_SECONDS = 60  # windows live 2 x their length (the sliding estimate reads 2 slots) + this
DEFAULT_TIMEOUT_SECONDS = 2.0
IDEMPOTENCY_TTL_SECONDS = DAY  # a retry within 24 h of an admitted request is not billed again


@dataclass(frozen=True, slots=True)
class _Script:
    name: str
    text: str
    sha: str


def _load(name: str) -> _Script:
    text = resources.files("meterguard.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return _Script(name, text, hashlib.sha1(text.encode()).hexdigest())


METER = _load("meter")
# The first element of every METER batch: settings of the whole batch, not repeated per operation.
_BATCH_SETTINGS = (
    PERIOD_AUDIT_SECONDS,
    DAY_TTL_SECONDS,
    MAX_UNLISTED_ROUTES,
    OTHER_ROUTE,
    WINDOW_SLACK_SECONDS,
    IDEMPOTENCY_TTL_SECONDS,
)
CREATE_CUSTOMER = _load("create_customer")


def _meter(meter: Meter) -> list[Any]:
    return [
        -1 if meter.included is None else meter.included,
        meter.unit,
        [[-1 if up_to is None else up_to, price] for up_to, price in meter.tiers],
    ]


def _counter(window: Window) -> str:
    return quote(window.counter, safe="")


def no_retry() -> Retry:
    """A retry policy that never retries: a blind retry of an increment double counts."""
    return Retry(NoBackoff(), 0)


@contextmanager
def _translated() -> Iterator[None]:
    """Wrap redis-py's exceptions once, at the store boundary."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterDownError) as exc:
        raise StoreUnavailable(f"store unreachable: {exc}") from exc
    except redis_errors.RedisClusterException as exc:
        # raised when no startup node of a cluster answers
        raise StoreUnavailable(f"store unreachable: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise StoreError(f"store error: {exc}") from exc
    except OSError as exc:  # a socket error that escaped redis-py's own wrapping
        raise StoreUnavailable(f"store unreachable: {exc}") from exc


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


def _customer(fields: Mapping[str, str]) -> CustomerRecord | None:
    if "plan" not in fields:
        return None
    cap = fields.get("spend_cap")
    return CustomerRecord(
        id=fields["id"],
        plan=fields["plan"],
        status="suspended" if fields.get("status") == "suspended" else "active",
        anchor_day=int(fields.get("anchor_day", "1")),
        created_at=float(fields.get("created_at", "0")),
        spend_cap=Decimal(cap) if cap else None,
        plan_history=tuple((float(at), str(plan)) for at, plan in json.loads(fields.get("plan_history", "[]"))),
    )


def _customer_fields(record: CustomerRecord) -> dict[str, str]:
    return {
        "id": record.id,
        "plan": record.plan,
        "status": record.status,
        "anchor_day": str(record.anchor_day),
        "created_at": repr(record.created_at),
        "spend_cap": "" if record.spend_cap is None else str(record.spend_cap),
        "plan_history": json.dumps([[at, plan] for at, plan in record.plan_history]),
    }


class RedisStore(RedisAlerts):
    """Store on one Redis server: ``redis://host:port/db`` or ``rediss://`` (TLS).

    Nothing connects at construction; the first command does. Query parameters of the URL
    (``socket_timeout``, ``max_connections``, ...) are passed to redis-py.
    """

    def __init__(self, url: str, *, key_prefix: str = "mg") -> None:
        self.url = url
        self._prefix = key_prefix
        self._redis: Any = None
        self._batcher = Batcher(self._run, self._slot)
        self._tags: dict[str, str] = {}  # customer -> hash tag base, quoted once
        self._owners: set[Any] = set()  # clients made for a subscriber alone
        self._watching = 0  # watch() loops running
        self._closed = False

    def _slot(self, op: _Op) -> int:
        """Operations that may share one script call: all of them on a single server."""
        return 0

    # connection -----------------------------------------------------------------------------------

    def _connect(self) -> Any:
        """Build the client (no I/O). The cluster store overrides only this."""
        options: dict[str, Any] = {
            "socket_timeout": DEFAULT_TIMEOUT_SECONDS,
            "socket_connect_timeout": DEFAULT_TIMEOUT_SECONDS,
        }
        return Redis.from_url(self.url, decode_responses=True, retry=no_retry(), **options)

    def _subscriber(self) -> tuple[Any, Any]:
        """A pub/sub for change events, and a client of its own to close with it (or None)."""
        return self._client().pubsub(), None

    def _client(self) -> Any:
        if self._closed:
            # Late work of a closed gateway (a background task) must not open new connections.
            raise StoreUnavailable("the store has been closed")
        if self._redis is None:
            self._redis = self._connect()
        return self._redis

    async def _script(self, script: _Script, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        client = self._client()
        with _translated():
            try:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                # The script did not run; EVAL runs it once and caches it on that node again.
                return await client.eval(script.text, len(keys), *keys, *args)

    # keys -----------------------------------------------------------------------------------------

    def _tag(self, customer: str) -> str:
        tag = self._tags.get(customer)
        if tag is None:
            if len(self._tags) > 100_000:
                self._tags.clear()
            tag = self._tags[customer] = f"{self._prefix}:{{c:{quote(customer, safe='')}}}"
        return tag

    def _period_key(self, customer: str, period_id: str) -> str:
        return f"{self._tag(customer)}:p:{period_id}"

    def _day_key(self, customer: str, day: str) -> str:
        return f"{self._tag(customer)}:d:{day}"

    def _customers_key(self) -> str:
        return f"{self._prefix}:customers"

    def _key_key(self, key_hash: str) -> str:
        return f"{self._prefix}:key:{key_hash}"

    def _key_id_key(self, key_id: str) -> str:
        return f"{self._prefix}:keyid:{key_id}"

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
        reply = await self._script(METER, keys, [payload])
        sec, usec, *results = reply
        # The script's `now`, computed the same way as in the script.
        return results, int(sec) + int(usec) / 1_000_000

    async def usage(self, customer: str, period_id: str) -> Usage:
        with _translated():
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
        with _translated():
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

    # customers ------------------------------------------------------------------------------------

    async def create_customer(self, record: CustomerRecord) -> None:
        args = [item for pair in _customer_fields(record).items() for item in pair]
        created = await self._script(CREATE_CUSTOMER, [f"{self._tag(record.id)}:customer"], args)
        if not int(created):
            raise CustomerExists(record.id)
        with _translated():
            await self._client().sadd(self._customers_key(), record.id)

    async def get_customer(self, customer: str) -> CustomerRecord | None:
        with _translated():
            fields: dict[str, str] = await self._client().hgetall(f"{self._tag(customer)}:customer")
        return _customer(fields)

    async def list_customers(self) -> list[CustomerRecord]:
        with _translated():
            client = self._client()
            ids = sorted(await client.smembers(self._customers_key()))
            if not ids:
                return []
            async with client.pipeline(transaction=False) as pipe:
                for customer in ids:
                    pipe.hgetall(f"{self._tag(customer)}:customer")
                replies: list[dict[str, str]] = await pipe.execute()
        records = (_customer(fields) for fields in replies)
        return [record for record in records if record is not None]

    async def put_customer(self, record: CustomerRecord) -> None:
        with _translated():
            client = self._client()
            await client.hset(f"{self._tag(record.id)}:customer", mapping=_customer_fields(record))
            await client.sadd(self._customers_key(), record.id)

    # keys -----------------------------------------------------------------------------------------

    async def add_key(self, key_hash: str, record: KeyRecord) -> None:
        tag = self._tag(record.customer)
        fields = {
            "customer": record.customer,
            "key_id": record.key_id,
            "prefix": record.prefix,
            "created_at": repr(record.created_at),
            "revoked": "1" if record.revoked else "0",
        }
        with _translated():
            client = self._client()
            # The record first: a key listed in the index always resolves.
            await client.hset(self._key_key(key_hash), mapping=fields)
            await client.hset(self._key_id_key(record.key_id), mapping={"hash": key_hash, "customer": record.customer})
            await client.hset(f"{tag}:keys", record.key_id, key_hash)
            if record.last_used is not None:
                await client.hset(f"{tag}:used", record.key_id, repr(record.last_used))
            else:
                await client.hdel(f"{tag}:used", record.key_id)

    @staticmethod
    def _key_record(fields: Mapping[str, str], last_used: str | None) -> KeyRecord:
        return KeyRecord(
            key_id=fields["key_id"],
            customer=fields["customer"],
            prefix=fields["prefix"],
            created_at=float(fields["created_at"]),
            last_used=float(last_used) if last_used is not None else None,
            revoked=fields.get("revoked") == "1",
        )

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        with _translated():
            client = self._client()
            fields: dict[str, str] = await client.hgetall(self._key_key(key_hash))
            if not fields:
                return None
            last_used: str | None = await client.hget(f"{self._tag(fields['customer'])}:used", fields["key_id"])
        return self._key_record(fields, last_used)

    async def list_keys(self, customer: str) -> list[KeyRecord]:
        tag = self._tag(customer)
        with _translated():
            client = self._client()
            index: dict[str, str] = await client.hgetall(f"{tag}:keys")
            if not index:
                return []
            used: dict[str, str] = await client.hgetall(f"{tag}:used")
            async with client.pipeline(transaction=False) as pipe:
                for key_hash in index.values():
                    pipe.hgetall(self._key_key(key_hash))
                replies: list[dict[str, str]] = await pipe.execute()
        records = [
            self._key_record(fields, used.get(fields["key_id"]))
            for fields in replies
            if fields and fields.get("customer") == customer
        ]
        return sorted(records, key=lambda record: record.created_at)

    async def revoke_key(self, key_id: str) -> bool:
        with _translated():
            client = self._client()
            key_hash: str | None = await client.hget(self._key_id_key(key_id), "hash")
            if key_hash is None:
                return False
            await client.hset(self._key_key(key_hash), "revoked", "1")
        return True

    # lifecycle ------------------------------------------------------------------------------------

    # audit log --------------------------------------------------------------------------------------

    def _events_key(self, customer: str) -> str:
        return f"{self._tag(customer)}:events"

    async def append_event(self, customer: str, fields: Mapping[str, str]) -> str:
        with _translated():
            return str(await self._client().xadd(self._events_key(customer), dict(fields)))

    async def read_events(
        self, customer: str, group: str, consumer: str, count: int, *, pending: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        key = self._events_key(customer)
        client = self._client()
        with _translated():
            try:
                await client.xgroup_create(key, group, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            reply = await client.xreadgroup(group, consumer, {key: "0" if pending else ">"}, count=count)
        return [(str(event_id), dict(fields)) for _, entries in reply or () for event_id, fields in entries]

    async def ack_events(self, customer: str, group: str, ids: Sequence[str]) -> None:
        if ids:
            with _translated():
                await self._client().xack(self._events_key(customer), group, *ids)

    # change events --------------------------------------------------------------------------------

    def _events_channel(self) -> str:
        return f"{self._prefix}:events"

    async def notify(self, event: str) -> None:
        with _translated():
            await self._client().publish(self._events_channel(), event)

    async def watch(self, on_event: Callable[[str], None]) -> None:
        """Call ``on_event`` for each event any process publishes, until the store closes.

        The subscription reconnects with backoff. Events published while it was away are lost,
        so every (re)subscription reports ``"*"`` and every loss ``"-"``: callers drop everything
        they cached, and cache briefly while no events arrive. A PING every few seconds finds a
        connection that died silently. The loop ends by itself when the store closes: closing a
        connection under a pub/sub reader can deadlock in redis-py (redis-py#3941).
        """
        delay = 0.1
        self._watching += 1
        try:
            await self._watch(on_event, delay)
        finally:
            self._watching -= 1

    async def _watch(self, on_event: Callable[[str], None], delay: float) -> None:
        while not self._closed:
            pubsub = owner = None
            try:
                pubsub, owner = self._subscriber()
                if owner is not None:
                    self._owners.add(owner)
                await pubsub.subscribe(self._events_channel())
                on_event("*")
                delay = 0.1
                loop = asyncio.get_running_loop()
                pinged = loop.time()
                while not self._closed:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=WATCH_POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        on_event(str(message["data"]))
                    if loop.time() - pinged >= WATCH_PING_SECONDS:
                        await pubsub.ping()
                        pinged = loop.time()
            except Exception as exc:  # noqa: BLE001 - whatever broke it, the watcher must live on
                on_event("-")
                if self._closed:
                    return
                log.warning("change events: subscription lost (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, WATCH_BACKOFF_MAX_SECONDS)
            finally:
                if pubsub is not None:
                    await pubsub.aclose()
                if owner is not None:
                    self._owners.discard(owner)
                    await owner.aclose()

    async def diagnose(self) -> list[str]:
        """Settings that lose usage: no AOF (a restart forgets it), key eviction (under-billing).

        Managed Redis services often refuse CONFIG; then nothing can be said and nothing is.
        """
        try:
            with _translated():
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
        with _translated():
            await self._client().ping()

    async def aclose(self) -> None:
        await self._batcher.drain()
        self._closed = True
        # Running watch() loops notice within a poll and close their own connections; only then
        # is the client closed under them (see watch()).
        for _ in range(int(4 * WATCH_POLL_SECONDS / 0.01)):
            if not self._watching:
                break
            await asyncio.sleep(0.01)
        for owner in list(self._owners):
            await owner.aclose()
        client, self._redis = self._redis, None
        if client is not None:
            with _translated():
                await client.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._safe_url()!r})"

    def _safe_url(self) -> str:
        # never show a password from the URL
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return f"{scheme}{sep}{rest}"
