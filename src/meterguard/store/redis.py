"""The Redis store: metering through the ledger (one Lua script per batch), everything else plain.

Layout (``mg`` is the key prefix; ``<c>`` the customer id, percent-encoded so that ``{``, ``}``
and ``:`` in an id can neither break the hash tag nor collide with another customer's keys)::

    mg:{c:<c>}:s              hash    windows, last use per key, ledger records (store/lua/meter.lua)
    mg:{c:<c>}:p:<period>     hash    calls, records, refusals, leases, and the audit cells: calls
                                      and records per (day, route, key); totals by route, key and
                                      day are their sums
    mg:{c:<c>}:events         stream  usage events (one per customer, period and day in a batch)
    mg:{c:<c>}:i:<digest>     hash    an Idempotency-Key: the request fingerprint and its state
    mg:{c:<c>}:customer       hash    id, plan, status, anchor_day, created_at, spend_cap, plan_history
    mg:{c:<c>}:keys           hash    key_id -> key hash
    mg:customers              set     customer ids
    mg:key:<sha256>           hash    customer, key_id, prefix, created_at, revoked
    mg:keyid:<key_id>         hash    hash, customer

Every key of one customer shares the hash tag ``{c:<c>}``, and every script declares every key
it touches, so each runs on the one node that owns the slot, also while the slot migrates.
Counters get their expiry in the script that writes them (an INCR and an EXPIRE in two round
trips leave immortal keys after a crash, limits#14), and the clock is the server's ``TIME``,
never the gateways'.

Writes are retried by id (store/_ledger.py): the client itself never retries, and NOSCRIPT
(a restart or failover emptied the script cache) means the script did not run; it is sent once
more with EVAL.
"""

from __future__ import annotations

import logging

from ..errors import StoreError
from ._redis_alerts import RedisAlerts
from ._redis_client import DEFAULT_TIMEOUT_SECONDS, no_retry, translated
from ._redis_directory import RedisDirectory
from ._redis_events import RedisEvents
from ._redis_idempotency import RedisIdempotency
from ._redis_meter import PERIOD_AUDIT_SECONDS, RedisMeter

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "PERIOD_AUDIT_SECONDS", "RedisStore", "no_retry"]

log = logging.getLogger("meterguard.store")


class RedisStore(RedisMeter, RedisIdempotency, RedisDirectory, RedisEvents, RedisAlerts):
    """Store on one Redis server: ``redis://host:port/db`` or ``rediss://`` (TLS).

    Nothing connects at construction; the first command does. Query parameters of the URL
    (``socket_timeout``, ``max_connections``, ...) are passed to redis-py.
    """

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
        if not await self.ledger.drain(self.timeout):
            log.error("store closed with %d metering writes unacknowledged", self.ledger.depth())
        await self.ledger.aclose()
        self._closed = True
        # Running watch() loops notice within a poll and close their own connections; only then
        # is the client closed under them (see watch()).
        await self._stop_watching()
        await self._close_clients()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._safe_url()!r})"

    def _safe_url(self) -> str:
        # never show a password from the URL
        scheme, sep, rest = self.url.partition("://")
        if "@" in rest:
            rest = "***@" + rest.rsplit("@", 1)[1]
        return f"{scheme}{sep}{rest}"
