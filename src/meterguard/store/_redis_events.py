"""The audit stream of each customer and the change events between processes, on Redis.

A mixin of RedisStore (layout: store/redis.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis import exceptions as redis_errors

from ._redis_client import RedisBase, translated

log = logging.getLogger("meterguard.store")

WATCH_BACKOFF_MAX_SECONDS = 5.0
WATCH_PING_SECONDS = 5.0
WATCH_POLL_SECONDS = 0.2  # how soon a watch() loop sees that the store closed


def usage_fields(customer: str, fields: dict[str, str]) -> dict[str, str]:
    """An event as store.base documents it. The metering script writes usage compactly (``v: 3``,
    one field ``u``: a line of counts, then a line per count of a route and key; see
    store/lua/meter.lua); readers get the fields of ``v: 2``, with ``routes`` and ``keys`` summed."""
    if fields.get("v") != "3":
        return dict(fields)
    head, *rows = fields.get("u", "").split("\n")
    period, day, ts, calls, records, replays, unmetered, *uncounted = head.split("\t")  # uncounted: when not 0
    routes: dict[str, list[int]] = {}
    keys: dict[str, list[int]] = {}
    for row in rows:
        route, key_id, row_calls, row_records = row.split("\t")
        for table, name in ((routes, route), (keys, key_id)):
            counts = table.setdefault(name, [0, 0])
            counts[0] += int(row_calls)
            counts[1] += int(row_records)
    out = {
        "v": "2", "type": "usage", "customer": customer, "period": period, "day": day, "ts": ts,
        "calls": calls, "records": records, "replays": replays,
        "routes": json.dumps(routes, separators=(",", ":")), "keys": json.dumps(keys, separators=(",", ":")),
    }  # fmt: skip
    if unmetered != "0":
        out["unmetered"] = unmetered
    if uncounted:
        out["uncounted"] = uncounted[0]
    return out


def _stream_id(text: str) -> tuple[int, int]:
    ms, _, seq = str(text).partition("-")
    return int(ms), int(seq or 0)


class RedisEvents(RedisBase):
    def __init__(self, url: str, *, key_prefix: str = "mg") -> None:
        super().__init__(url, key_prefix=key_prefix)
        self._owners: set[Any] = set()  # clients made for a subscriber alone
        self._watching = 0  # watch() loops running

    def _subscriber(self) -> tuple[Any, Any]:
        """A pub/sub for change events, and a client of its own to close with it (or None)."""
        return self._client().pubsub(), None

    async def _stop_watching(self) -> None:
        """After the store is marked closed: let watch() loops end by themselves, then close
        the clients made for them (closing a client under a pub/sub reader can hang)."""
        for _ in range(int(4 * WATCH_POLL_SECONDS / 0.01)):
            if not self._watching:
                break
            await asyncio.sleep(0.01)
        for owner in list(self._owners):
            await owner.aclose()

    # audit log --------------------------------------------------------------------------------------

    async def append_event(self, customer: str, fields: Mapping[str, str]) -> str:
        with translated():
            return str(await self._client().xadd(self._events_key(customer), dict(fields)))

    async def read_events(
        self, customer: str, group: str, consumer: str, count: int, *, pending: bool = False
    ) -> list[tuple[str, dict[str, str]]]:
        key = self._events_key(customer)
        client = self._client()
        with translated():
            try:
                await client.xgroup_create(key, group, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            reply = await client.xreadgroup(group, consumer, {key: "0" if pending else ">"}, count=count)
        return [
            (str(event_id), usage_fields(customer, fields))
            for _, entries in reply or ()
            for event_id, fields in entries
        ]

    async def ack_events(self, customer: str, group: str, ids: Sequence[str]) -> None:
        """Acknowledge exported events, then trim what every export group has acknowledged."""
        if not ids:
            return
        key = self._events_key(customer)
        with translated():
            client = self._client()
            await client.xack(key, group, *ids)
            # The oldest event some group still needs: its oldest pending one, or the first one
            # after what it was last given; trimming follows the slowest export. Exported events
            # stay events_keep_exported seconds more, for a new export group or a replay. A group
            # no consumer has used for that long (an export to a file nobody writes any more)
            # holds nothing back: what it has not read by then is trimmed.
            groups = await client.xinfo_groups(key)
            keep_ms = self.events_keep_exported * 1000
            needed: list[tuple[int, int]] = [(int(time.time() * 1000) - keep_ms, 0)]
            for info in groups:
                name = info["name"]
                consumers = await client.xinfo_consumers(key, name)
                if not consumers or min(int(c.get("idle") or 0) for c in consumers) > keep_ms:
                    continue
                if int(info.get("pending") or 0):
                    summary = await client.xpending(key, name)
                    needed.append(_stream_id(summary["min"]))
                else:
                    ms, seq = _stream_id(info["last-delivered-id"])
                    needed.append((ms, seq + 1))
            ms, seq = min(needed)
            if groups and ms > 0:
                await client.xtrim(key, minid=f"{ms}-{seq}", approximate=False)

    async def range_events(self, customer: str, after: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """Events after id ``after``, read past every consumer group (a replay moves no group)."""
        with translated():
            reply = await self._client().xrange(self._events_key(customer), min=f"({after}", max="+", count=count)
        return [(str(event_id), usage_fields(customer, fields)) for event_id, fields in reply or ()]

    # change events --------------------------------------------------------------------------------

    def _events_channel(self) -> str:
        return f"{self._prefix}:events"

    async def notify(self, event: str) -> None:
        with translated():
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
