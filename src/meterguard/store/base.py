"""The Store protocol: everything meterguard keeps, behind one interface.

A store makes admission decisions atomically (every rate window, both period quotas and the
spend cap in one step), settles records, keeps usage counters for audit, and holds
customers and keys. Backends: memory (one process), Redis, Redis Cluster. Backend errors
are wrapped once, here at the boundary, as :class:`~meterguard.errors.StoreError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from ..plans import Window

if TYPE_CHECKING:
    from ..config import LedgerSettings

Reason = Literal["rate_limited", "quota", "spend_cap"]
CustomerStatus = Literal["active", "suspended"]
OTHER_ROUTE = "other"
MAX_UNLISTED_ROUTES = 200  # distinct unmatched "METHOD /path" labels kept per customer and period


#: Event stream fields (version 1). Every event has ``v``, ``type``, ``customer`` and ``ts`` (the
#: store's clock, epoch seconds). ``type: usage`` adds ``period``, ``day``, ``calls``, ``records``,
#: ``replays`` and ``routes`` / ``keys`` (JSON objects of ``[calls, records]``); other types
#: (``plan``, ``alert``, ...) add their own fields. An event's id is unique within its customer.
EVENT_VERSION = "1"


@dataclass(frozen=True, slots=True)
class Meter:
    """Terms of one meter (calls or records) for a decision: included quota and overage price."""

    included: int | None  # None: no quota
    unit: int = 0  # overage unit; 0: not billed past the quota (block)
    price_micros: int = 0  # price per unit in millionths of the currency: the first tier's
    #: Graduated tiers ``(up_to, price_micros)``: ``up_to`` counts overage units (cumulative) and
    #: is None on the last tier. Left empty, a billed meter gets the one flat tier of
    #: ``price_micros``, so that billing has a single code path.
    tiers: tuple[tuple[int | None, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.tiers and self.unit > 0:
            object.__setattr__(self, "tiers", ((None, self.price_micros),))

    @property
    def billed(self) -> bool:
        return self.unit > 0


@dataclass(frozen=True, slots=True)
class Threshold:
    """One alert: ``fraction`` of a meter's ``limit`` (its quota; for spend, the cap in cents),
    reached when the meter's level is at least ``units``. ``name`` is alerts.Crossing's."""

    name: str  # e.g. "calls:0.8"
    meter: int  # METER_CALLS, METER_RECORDS or METER_SPEND
    units: int
    fraction: float
    limit: int


METER_CALLS, METER_RECORDS, METER_SPEND = 1, 2, 3


@dataclass(frozen=True, slots=True)
class Alerting:
    """What a store needs to tell, in the step that changes usage, which thresholds it crossed:
    the plan's thresholds (by meter, then level) and, for spend, the meters and the cap."""

    thresholds: tuple[Threshold, ...]
    calls: Meter
    records: Meter
    spend_cap_cents: int | None

    @property
    def spend(self) -> bool:
        return any(threshold.meter == METER_SPEND for threshold in self.thresholds)


@dataclass(frozen=True, slots=True)
class Fired:
    """A threshold crossed, once per customer and period; delivered, then acknowledged
    (Store.ack_alerts) so that the store stops reporting it."""

    customer: str
    period_id: str
    name: str
    level: int  # the meter's level when it was crossed


AlertSink = Callable[[list[Fired]], None]


# AdmitRequest, WindowState, Decision and Settlement are built for every request: plain slotted
# classes, not frozen ones, whose __init__ would pay an object.__setattr__ per field (three times
# the cost, measured). Nothing changes them once built; dataclasses.replace() makes a new one.
@dataclass(slots=True)
class AdmitRequest:
    customer: str
    key_id: str
    route: str  # usage label: the route's match string, or "METHOD /path" for unmatched ones
    listed: bool  # False for unmatched routes, whose labels are bounded per period
    weight: int
    windows: tuple[Window, ...]
    strategy: Literal["sliding", "fixed"]
    period_id: str
    period_end: int  # epoch seconds; counters of the period expire some time after it
    calls: Meter
    records: Meter
    spend_cap_cents: int | None  # None: no cap
    day: str  # YYYY-MM-DD, for the daily audit counters
    lease: int = 0  # fast path: extra units wanted for local decisions (0: exact, this request only)
    idempotency_key: str | None = None  # a retry of an admitted request with this key is not billed again
    idempotency_fingerprint: str = ""  # method, path, query and body digest of the request with that key
    served_on_loss: bool = False  # fail_open: a request whose decision is lost is served, so counted once
    alerting: Alerting | None = None  # the plan's alert thresholds (None: the plan has none)


@dataclass(slots=True)
class WindowState:
    window: Window
    remaining: int  # units left after this decision
    reset_after: float  # seconds until the window's count next drops (its end, for a fixed window)


@dataclass(slots=True)
class Decision:
    admitted: bool
    reason: Reason | None
    violated: tuple[str, ...]  # policy names, e.g. ("1m",) or ("calls-period",)
    retry_after: float  # seconds; 0 when admitted; the caller rounds up and uses the period end for quotas
    windows: tuple[WindowState, ...]
    calls_used: int  # in the period, including this call when admitted
    records_used: int
    spend_cents: int  # overage spend so far in the period, before this call
    now: float  # the store's clock, epoch seconds
    granted: int = 0  # extra units leased to the caller (fast path), already counted in every window
    replay: bool = False  # an idempotent retry: served, counted in the windows, not billed
    slots: tuple[int, ...] = ()  # the slot index of each window at the decision, for giving units back
    #: ``in_flight``: the Idempotency-Key's first request is still running; ``mismatch``: the key
    #: came with another request. Both refused (admitted False, reason None), nothing counted.
    idempotency: Literal["in_flight", "mismatch"] | None = None


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The first response to an Idempotency-Key, replayed byte for byte to its repeats."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(slots=True)
class Settlement:
    """What a response adds to an admitted call: its records, and the corrections only the
    response can tell (a call refunded for a status the plan does not bill, records that could
    not be counted)."""

    customer: str
    key_id: str
    route: str
    listed: bool
    period_id: str
    period_end: int
    records: int
    day: str
    calls: int = 0  # negative: calls refunded (a response status the plan does not bill)
    uncounted: int = 0  # responses whose records could not be counted (too large, or not JSON)
    alerting: Alerting | None = None

    @property
    def empty(self) -> bool:
        return self.records <= 0 and self.calls == 0 and self.uncounted <= 0


@dataclass(frozen=True, slots=True)
class UsageRow:
    route: str
    listed: bool
    key_id: str
    calls: int
    records: int


@dataclass(frozen=True, slots=True)
class Flush:
    """A fast-path process's local usage of one customer and period, and its unused leases."""

    customer: str
    period_id: str
    period_end: int
    day: str
    rows: tuple[UsageRow, ...]
    consumed: int  # leased units used since the last flush (already in the windows)
    returned: int  # leased units given back unused
    windows: tuple[tuple[Window, int, int], ...] = ()  # (window, slot index, units to take back out)
    alerting: Alerting | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    calls: int = 0
    records: int = 0


@dataclass(frozen=True, slots=True)
class Usage:
    """Raw counters of one customer and period, as the store keeps them."""

    calls: int = 0
    records: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)  # by Reason
    by_route: Mapping[str, Counts] = field(default_factory=dict)
    by_key: Mapping[str, Counts] = field(default_factory=dict)
    replays: int = 0  # idempotent retries served unbilled
    unmetered: int = 0  # requests served (fail_open) whose usage could not be kept
    uncounted: int = 0  # responses whose records could not be counted (over the body limit, or not JSON)


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: str
    calls: int = 0
    records: int = 0
    by_route: Mapping[str, Counts] = field(default_factory=dict)
    by_key: Mapping[str, Counts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    id: str
    plan: str
    status: CustomerStatus = "active"
    anchor_day: int = 1
    created_at: float = 0.0
    spend_cap: Decimal | None = None  # overage spend cap of this customer; None: the plan's
    #: ``(changed_at, plan)`` for every plan this customer has been put on, oldest first, so that a
    #: statement can name the plan in force at a period's end without scanning the event stream.
    plan_history: tuple[tuple[float, str], ...] = ()


#: A key whose expiry is this close shows as "expiring" in key lists (a rotated key in its grace, say).
EXPIRING_WITHIN_SECONDS = 7 * 86_400
KeyState = Literal["active", "expiring", "expired", "revoked"]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    customer: str
    prefix: str
    created_at: float
    last_used: float | None = None
    revoked: bool = False
    expires_at: float | None = None  # epoch seconds; refused from then on. None: does not expire
    replaced_by: str | None = None  # the key id that a rotation issued in its place

    def state(self, now: float) -> KeyState:
        if self.revoked:
            return "revoked"
        if self.expires_at is None:
            return "active"
        if self.expires_at <= now:
            return "expired"
        return "expiring" if self.expires_at - now <= EXPIRING_WITHIN_SECONDS else "active"


@dataclass(frozen=True, slots=True)
class Delivery:
    """A webhook delivery in the store's queue (alerts.py); it outlives the process that queued it."""

    id: str
    payload: str  # the JSON body, exactly as it is signed and sent
    attempts: int = 0  # failed attempts so far
    created_at: float = 0.0  # epoch seconds; a delivery is given up 24 h after this


@runtime_checkable
class AlertQueue(Protocol):
    """Once-only alert claims and a durable, leased queue of webhook deliveries.

    Kept apart from :class:`Store` until every backend has it; alerts.py needs only this.
    """

    async def claim_alert(
        self, customer: str, period_id: str, name: str, delivery: Delivery | None, due_at: float, keep_seconds: int
    ) -> bool: ...  # True once per (customer, period, name); the delivery (if any) is queued in the same atomic step
    async def due_deliveries(
        self, now: float, limit: int, lease_seconds: float
    ) -> list[Delivery]: ...  # due ones, each leased (hidden from other callers) for lease_seconds
    async def retry_delivery(self, delivery_id: str, due_at: float, attempts: int) -> None: ...
    async def finish_delivery(self, delivery_id: str) -> None: ...  # delivered or given up: forget it


@runtime_checkable
class Store(AlertQueue, Protocol):
    """What every backend provides. All methods may raise StoreError."""

    url: str

    # metering ---------------------------------------------------------------------------------
    async def admit(self, request: AdmitRequest) -> Decision: ...
    # Once called, settle and flush complete even if the caller is cancelled (a client that went
    # away cancels its request task): records served are billed.
    async def settle(self, settlement: Settlement) -> None: ...
    async def flush(self, flush: Flush) -> None: ...
    async def usage(self, customer: str, period_id: str) -> Usage: ...
    async def daily(self, customer: str, days: list[str]) -> list[DayUsage]: ...

    # Idempotency-Key: an admission with a key marks it "running" (Decision.idempotency tells a
    # repeat "in_flight" or "mismatch"); the first request's end stores its response (``None``:
    # not replayable, the key is forgotten and a repeat runs as a new, billed call).
    # Alerts: a store reports the thresholds its usage crosses to the sink (in any process of the
    # gateway, at least once each) until they are acknowledged.
    def set_alert_sink(self, sink: AlertSink | None) -> None: ...
    async def ack_alerts(self, customer: str, period_id: str, names: Sequence[str]) -> None: ...

    async def finish_idempotent(
        self, customer: str, key: str, fingerprint: str, response: StoredResponse | None, ttl_seconds: int
    ) -> None: ...
    async def stored_response(self, customer: str, key: str) -> StoredResponse | None: ...

    # customers and keys -------------------------------------------------------------------------
    async def create_customer(self, record: CustomerRecord) -> None: ...  # CustomerExists
    async def get_customer(self, customer: str) -> CustomerRecord | None: ...
    async def list_customers(self) -> list[CustomerRecord]: ...
    async def put_customer(self, record: CustomerRecord) -> None: ...  # create or replace
    async def add_key(self, key_hash: str, record: KeyRecord) -> None: ...
    async def find_key(self, key_hash: str) -> KeyRecord | None: ...
    async def list_keys(self, customer: str) -> list[KeyRecord]: ...
    async def revoke_key(self, key_id: str) -> bool: ...  # False when unknown
    async def get_key(self, key_id: str) -> KeyRecord | None: ...
    async def expire_key(
        self, key_id: str, expires_at: float, replaced_by: str | None = None
    ) -> bool: ...  # sets the key's expiry (and successor); False when unknown

    # audit log: one append-only stream of events per customer ------------------------------------
    async def append_event(self, customer: str, fields: Mapping[str, str]) -> str: ...  # the event's id
    async def read_events(
        self, customer: str, group: str, consumer: str, count: int, *, pending: bool = False
    ) -> list[tuple[str, dict[str, str]]]: ...  # new events, or with pending=True those read, not acked
    async def ack_events(self, customer: str, group: str, ids: Sequence[str]) -> None: ...
    async def range_events(
        self, customer: str, after: str, count: int
    ) -> list[tuple[str, dict[str, str]]]: ...  # ids after ``after`` ("0-0": all kept), oldest first, outside any group

    # change events: a revoked key or changed customer reaches every process's cache at once ------
    async def notify(self, event: str) -> None: ...
    async def watch(self, on_event: Callable[[str], None]) -> None: ...  # until closed or cancelled

    # lifecycle ----------------------------------------------------------------------------------
    def configure_ledger(self, settings: LedgerSettings) -> None: ...  # before first use: spool, bounds
    async def start(self) -> None: ...  # once per process, in its loop: replay what a spool kept
    async def ping(self) -> None: ...  # raises StoreError when unhealthy
    async def diagnose(self) -> list[str]: ...  # warnings about settings that can lose usage
    async def aclose(self) -> None: ...
