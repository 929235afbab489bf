"""Webhook delivery of alerts: signing (as Stripe signs its webhooks), the POST, and the queue's drainer.

The POST is written with asyncio streams and h11 (which uvicorn already brings): one short
request per delivery needs no HTTP client dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import h11

from ._types import Clock
from .config import Config, WebhookSettings
from .metrics import DISCARD, Metrics
from .store.base import AlertQueue, Delivery

# The logger of the whole alerts feature (alerts.py): one name for operators to follow.
log = logging.getLogger("meterguard.alerts")

SIGNATURE_HEADER = "Meterguard-Signature"
EVENT_ID_HEADER = "Meterguard-Event-Id"
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 600.0
GIVE_UP_SECONDS = 86_400.0
LEASE_SECONDS = 60.0  # longer than any send (timeout_seconds <= 60): a leased delivery is not sent twice at once
SIGNATURE_TOLERANCE_SECONDS = 300
MAX_RESPONSE_BYTES = 64 * 1024


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


__all__ = ["EVENT_ID_HEADER", "SIGNATURE_HEADER", "Deliverer", "post", "sign", "verify"]
