"""Threshold alerts: fired once per period, logged, and POSTed to a signed webhook.

A plan's ``alerts: [0.8, 1.0]`` are fractions of its calls and records quotas and, where the
customer has a spend cap, of that cap. :class:`Alerts` is what the gateway calls (cheaply, at
most about once a second per customer): it works out which thresholds the usage has crossed
(:func:`crossed`, pure), and for each one not yet claimed it asks the store to claim it and to
queue its webhook delivery in one atomic step, so that any number of gateway processes racing
on the same crossing fire it exactly once. :class:`Deliverer` runs in every gateway process and
drains the queue, which lives in the store so that a restart loses nothing: each delivery is
leased while it is being sent, retried with exponential backoff (1 s, 2 s, 4 s ... capped at
10 minutes) and given up, with an error logged, 24 hours after it was queued.

Requests are signed as Stripe signs its webhooks: ``Meterguard-Signature: t=<unix>,v1=<hex>``
where the hex is HMAC-SHA256 of ``"<t>.<body>"`` under the shared secret; receivers should
check the time as well, to refuse replays (:func:`verify`). Delivery is at least once: a
receiver deduplicates on ``Meterguard-Event-Id`` (the body's ``id``).

The POST is written with asyncio streams and h11 (which uvicorn already brings): one short
request per delivery needs no HTTP client dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import h11

from ._types import Clock
from .billing import cap_cents, meters, money, spend_cents
from .config import Config, WebhookSettings
from .metrics import DISCARD, Metrics
from .periods import Period, period_named, rfc3339
from .plans import Plan
from .store.base import (
    METER_CALLS,
    METER_RECORDS,
    METER_SPEND,
    Alerting,
    AlertQueue,
    CustomerRecord,
    Delivery,
    Fired,
    Threshold,
    Usage,
)

log = logging.getLogger("meterguard.alerts")

SIGNATURE_HEADER = "Meterguard-Signature"
EVENT_ID_HEADER = "Meterguard-Event-Id"
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 600.0
GIVE_UP_SECONDS = 86_400.0
LEASE_SECONDS = 60.0  # longer than any send (timeout_seconds <= 60): a leased delivery is not sent twice at once
CLAIM_KEEP_SECONDS = 400 * 86_400  # claims outlive their period, as the period counters do
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_RESPONSE_BYTES = 64 * 1024
_UNSET: Any = object()


# ------------------------------------------------------------------------------------------------
# what crossed
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Crossing:
    """A threshold reached: ``used >= threshold x limit`` on ``meter`` (spend in cents)."""

    meter: str  # "calls" | "records" | "spend"
    threshold: float
    used: int
    limit: int

    @property
    def name(self) -> str:
        return f"{self.meter}:{self.threshold:g}"


def crossed(
    thresholds: Sequence[float],
    *,
    calls: int,
    records: int,
    calls_limit: int | None,
    records_limit: int | None,
    spend_cents: int = 0,
    cap_cents: int | None = None,
) -> list[Crossing]:
    """Every (meter, threshold) that the usage has reached; pure, so any process decides the same.

    Exact in decimal: 0.8 of 1,000,000 is 800,000, not 800,000.0000000001. A meter without a
    limit (or with a limit of 0, where any use is "past" every fraction) raises no alert.
    """
    found: list[Crossing] = []
    for meter, used, limit in (
        ("calls", calls, calls_limit),
        ("records", records, records_limit),
        ("spend", spend_cents, cap_cents),
    ):
        if limit is None or limit <= 0:
            continue
        for threshold in thresholds:
            if used >= Decimal(repr(threshold)) * limit:
                found.append(Crossing(meter, threshold, used, limit))
    return found


def alerting_for(plan: Plan, cap: int | None) -> Alerting | None:
    """A plan's alert thresholds as a store checks them (store.base.Alerting): for each meter with
    a limit (the quotas; spend: ``cap``, in cents) and each fraction, the level that crosses it,
    exactly as :func:`crossed` decides (``used >= fraction x limit`` in decimal)."""
    if not plan.alerts:
        return None
    calls_meter, records_meter = meters(plan)
    thresholds = []
    for code, name, limit in (
        (METER_CALLS, "calls", plan.quotas.calls),
        (METER_RECORDS, "records", plan.quotas.records),
        (METER_SPEND, "spend", cap),
    ):
        if limit is None or limit <= 0:
            continue
        for fraction in sorted(plan.alerts):
            units = math.ceil(Decimal(repr(fraction)) * limit)
            thresholds.append(Threshold(f"{name}:{fraction:g}", code, units, fraction, limit))
    if not thresholds:
        return None
    return Alerting(tuple(thresholds), calls_meter, records_meter, cap)


def event_id(customer: str, period_id: str, name: str) -> str:
    """The same id for the same crossing in every process: a receiver can deduplicate on it."""
    digest = hashlib.sha256(f"{customer}\x00{period_id}\x00{name}".encode()).hexdigest()
    return f"alrt_{digest[:32]}"


def payload(crossing: Crossing, *, customer: str, plan: str, period: Period, at: float) -> dict[str, Any]:
    """The webhook body of one crossing (amounts as decimal strings, as everywhere else)."""
    spend = crossing.meter == "spend"
    return {
        "id": event_id(customer, period.id, crossing.name),
        "type": "spend.threshold" if spend else "quota.threshold",
        "customer": customer,
        "plan": plan,
        "period": period.id,
        "meter": crossing.meter,
        "threshold": crossing.threshold,
        "used": money(crossing.used) if spend else crossing.used,
        "limit": money(crossing.limit) if spend else crossing.limit,
        "at": rfc3339(datetime.fromtimestamp(at, UTC)),
    }


# ------------------------------------------------------------------------------------------------
# signatures
# ------------------------------------------------------------------------------------------------


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``Meterguard-Signature`` value: ``t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(
    secret: bytes,
    header: str,
    body: bytes,
    *,
    tolerance: float = SIGNATURE_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when ``header`` signs ``body`` under ``secret`` and is at most ``tolerance`` seconds old."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", ()))


# ------------------------------------------------------------------------------------------------
# firing
# ------------------------------------------------------------------------------------------------


class Alerts:
    """Decides and fires alerts; the gateway calls :meth:`check` after its decisions.

    Claimed crossings are remembered in this process, so a check whose crossings have all
    fired makes no store round trip at all.
    """

    def __init__(self, config: Config, store: AlertQueue, *, clock: Clock = time.time) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        self._queued = config.webhooks is not None
        self._fired: dict[tuple[str, str], set[str]] = {}

    async def check(
        self,
        customer: str,
        plan: Plan | str,
        period: Period,
        usage: Usage,
        *,
        spend_cap_cents: int | None = _UNSET,
    ) -> list[Crossing]:
        """Fire every threshold that ``usage`` has newly crossed; returns those this call fired.

        ``spend_cap_cents`` is the customer's effective cap (billing.cap_cents with the customer's
        own cap); left out, the plan's.
        """
        plan = plan if isinstance(plan, Plan) else self.config.plans[plan]
        if not plan.alerts:
            return []
        calls_meter, records_meter = meters(plan)
        cap = cap_cents(plan) if spend_cap_cents is _UNSET else spend_cap_cents
        spend = spend_cents(usage.calls, usage.records, calls_meter, records_meter) if cap is not None else 0
        crossings = crossed(
            plan.alerts,
            calls=usage.calls,
            records=usage.records,
            calls_limit=plan.quotas.calls,
            records_limit=plan.quotas.records,
            spend_cents=spend,
            cap_cents=cap,
        )
        if not crossings:
            return []
        fired = self._fired_in(customer, period.id)
        newly: list[Crossing] = []
        for crossing in crossings:
            if crossing.name in fired:
                continue
            if await self._claim(customer, plan, period, crossing):
                newly.append(crossing)
            fired.add(crossing.name)
        return newly

    async def fire(self, fired: Fired, record: CustomerRecord) -> bool:
        """Claim and queue one threshold a store reported crossed (store.base.Fired); False when
        another process already did, or the plan no longer has that threshold."""
        if fired.name in self._fired_in(fired.customer, fired.period_id):
            return False
        plan = self.config.plans.get(record.plan)
        if plan is None:
            return False
        cap = cap_cents(plan, record.spend_cap)
        alerting = alerting_for(plan, cap)
        threshold = next((t for t in alerting.thresholds if t.name == fired.name), None) if alerting else None
        if threshold is None:
            return False
        anchor = record.anchor_day if self.config.anchor == "anniversary" else 1
        period = period_named(fired.period_id, anchor)
        meter = fired.name.partition(":")[0]
        won = await self._claim(
            fired.customer, plan, period, Crossing(meter, threshold.fraction, fired.level, threshold.limit)
        )
        self._fired_in(fired.customer, fired.period_id).add(fired.name)
        return won

    async def _claim(self, customer: str, plan: Plan, period: Period, crossing: Crossing) -> bool:
        """Claim the crossing and queue its webhook in one atomic step: once in every process."""
        now = self._clock()
        body = payload(crossing, customer=customer, plan=plan.name, period=period, at=now)
        delivery = Delivery(str(body["id"]), json.dumps(body, separators=(",", ":")), 0, now) if self._queued else None
        won = await self.store.claim_alert(customer, period.id, crossing.name, delivery, now, CLAIM_KEEP_SECONDS)
        if won:
            log.warning(
                "alert %s: customer %s (plan %s) reached %g of its %s %s in period %s: %s of %s",
                body["type"],
                customer,
                plan.name,
                crossing.threshold,
                crossing.meter,
                "cap" if crossing.meter == "spend" else "quota",
                period.id,
                body["used"],
                body["limit"],
            )
        return won

    def _fired_in(self, customer: str, period_id: str) -> set[str]:
        key = (customer, period_id)
        fired = self._fired.get(key)
        if fired is None:
            if len(self._fired) > 100_000:  # a bound on memory; forgetting costs one claim round trip
                self._fired.clear()
            fired = self._fired[key] = set()
        return fired


# ------------------------------------------------------------------------------------------------
# delivering
# ------------------------------------------------------------------------------------------------


async def post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> int:
    """POST ``body`` to ``url`` (http or https) and return the response status; raises OSError on failure."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OSError(f"not an http(s) URL: {url!r}")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    if ":" in parts.hostname and parts.port is None:
        host = f"[{parts.hostname}]"
    elif ":" in parts.hostname:
        host = f"[{parts.hostname}]:{parts.port}"
    connection = h11.Connection(our_role=h11.CLIENT)
    request = h11.Request(
        method="POST",
        target=target,
        headers=[
            ("Host", host),
            ("User-Agent", "meterguard-webhooks"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *headers.items(),
        ],
    )
    try:
        async with asyncio.timeout(timeout):
            context = ssl.create_default_context() if https else None
            reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=context)
            try:
                writer.write(connection.send(request) + connection.send(h11.Data(data=body)))
                writer.write(connection.send(h11.EndOfMessage()))
                await writer.drain()
                while True:
                    event = connection.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(MAX_RESPONSE_BYTES)
                        connection.receive_data(data)
                        continue
                    if isinstance(event, h11.Response):
                        return int(event.status_code)
                    if isinstance(event, h11.ConnectionClosed):
                        raise OSError("the receiver closed the connection without answering")
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError:
        raise OSError(f"no answer within {timeout:g}s") from None
    except h11.ProtocolError as exc:
        raise OSError(f"invalid HTTP response: {exc}") from None


class Deliverer:
    """Drains the store's delivery queue; one runs in each gateway process.

    ``start()`` runs :meth:`run` as a task and ``aclose()`` stops it; or put ``run()`` in a task
    of your own. Several deliverers on one store share the work: each delivery is leased to one.
    """

    metrics: Metrics = DISCARD  # a MeterGuard gives it its own

    def __init__(
        self,
        store: AlertQueue,
        url: str,
        secret: bytes,
        *,
        timeout: float = 5.0,
        clock: Clock = time.time,
        poll_seconds: float = 1.0,
        backoff_base: float = BACKOFF_BASE_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        give_up_after: float = GIVE_UP_SECONDS,
        batch: int = 20,
    ) -> None:
        self.store = store
        self.url = url
        self._secret = secret
        self.timeout = timeout
        self._clock = clock
        self.poll_seconds = poll_seconds
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.give_up_after = give_up_after
        self.batch = batch
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def from_config(cls, config: Config, store: AlertQueue, **options: Any) -> Deliverer | None:
        """None when plans.yaml configures no webhook; ConfigError when its variables are unset."""
        settings: WebhookSettings | None = config.webhooks
        if settings is None:
            return None
        url, secret = settings.resolve()
        return cls(store, url, secret, timeout=settings.timeout_seconds, **options)

    def __repr__(self) -> str:
        return f"Deliverer(url={self.url!r})"  # never the secret

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``, after ``attempts`` failures: 1, 2, 4 ... capped."""
        return float(min(self.backoff_base * 2 ** max(0, attempts - 1), self.backoff_max))

    async def deliver_due(self) -> int:
        """Send every delivery due now (one batch); returns how many were delivered."""
        deliveries = await self.store.due_deliveries(self._clock(), self.batch, LEASE_SECONDS)
        results = await asyncio.gather(*(self._deliver(delivery) for delivery in deliveries))
        return sum(results)

    async def _deliver(self, delivery: Delivery) -> bool:
        body = delivery.payload.encode("utf-8")
        headers = {
            SIGNATURE_HEADER: sign(self._secret, int(self._clock()), body),
            EVENT_ID_HEADER: delivery.id,
        }
        try:
            status = await post(self.url, body, headers, self.timeout)
            problem = None if 200 <= status < 300 else f"HTTP {status}"
        except OSError as exc:
            problem = str(exc) or type(exc).__name__
        if problem is None:
            self.metrics.alert("delivered")
            await self.store.finish_delivery(delivery.id)
            return True
        attempts = delivery.attempts + 1
        now = self._clock()
        if now - delivery.created_at >= self.give_up_after:
            log.error(
                "webhook %s: giving up after %d attempts over %.0f s (last: %s)",
                delivery.id,
                attempts,
                now - delivery.created_at,
                problem,
            )
            self.metrics.alert("given_up")
            await self.store.finish_delivery(delivery.id)
            return False
        delay = self.backoff(attempts)
        log.warning("webhook %s: attempt %d failed (%s); retrying in %g s", delivery.id, attempts, problem, delay)
        self.metrics.alert("failed")
        await self.store.retry_delivery(delivery.id, now + delay, attempts)
        return False

    async def run(self) -> None:
        """Deliver until cancelled; a store error is logged and retried at the next poll."""
        while not self._closing:
            try:
                delivered = await self.deliver_due()
            except Exception as exc:  # a failing store must not end the loop; it is retried
                log.warning("webhook deliveries: %s", exc)
                delivered = 0
            if not delivered:
                await asyncio.sleep(self.poll_seconds)

    def start(self) -> None:
        self._closing = False
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="meterguard-webhooks")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # The flag as well as the cancel: a store client that swallowed the cancellation must
        # still end the loop, and shutdown never waits on a send for longer than its timeout.
        self._closing = True
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=self.timeout + 1)
        if not done:
            log.warning("webhook deliveries: the delivery task did not stop within %g s", self.timeout + 1)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("webhook deliveries ended: %s", task.exception())


__all__ = [
    "Alerts",
    "Crossing",
    "Deliverer",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "crossed",
    "event_id",
    "payload",
    "post",
    "sign",
    "verify",
]
