"""Usage served under ``fail_open`` before the caller could even be looked up.

When the store is away and a process has never seen an API key, it cannot tell whose it is;
``fail_open`` serves the request anyway. Its usage (the key's hash, the route, when, and the
records of the response) waits here, bounded, until the store answers again: then the key is
looked up and the usage is handed to the store's ledger for that customer, as any other
(exactly once from there on). A key the store does not know (forged) is dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .customers import Directory
from .errors import StoreError
from .keys import PREFIX, hash_key, is_well_formed
from .periods import day_id, period_for
from .store.base import Flush, Store, UsageRow

log = logging.getLogger("meterguard.unresolved")

MAX_ENTRIES = 10_000
RETRY_SECONDS = 0.5


@dataclass(slots=True)
class Entry:
    key_hash: str
    route: str
    listed: bool
    weight: int
    moment: float  # when it was served (epoch seconds): its billing period and day
    records: int = 0


class Unresolved:
    def __init__(self, directory: Directory, store: Store) -> None:
        self.directory = directory
        self.store = store
        self._entries: list[Entry] = []
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # served and never counted: no room, or a key the store does not know

    def add(self, credential: str, route: str, listed: bool, weight: int, moment: float) -> Entry | None:
        """Keep the usage of a request served for an unknown credential; None when it cannot be."""
        if not credential.startswith(PREFIX) or not is_well_formed(credential):
            return None  # a JWT or junk: its customer cannot be known later either
        if len(self._entries) >= MAX_ENTRIES:
            self.dropped += 1
            return None
        entry = Entry(hash_key(credential), route, listed, weight, moment)
        self._entries.append(entry)
        if self._task is None:
            self._task = asyncio.ensure_future(self._resolve_forever())
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    async def _resolve_forever(self) -> None:
        try:
            while self._entries:
                await asyncio.sleep(RETRY_SECONDS)
                try:
                    await self.resolve()
                except StoreError:
                    continue  # still away
        finally:
            self._task = None

    async def resolve(self) -> None:
        """Hand every entry to the store (raises StoreError, keeping the rest, while it is away)."""
        while self._entries:
            entry = self._entries[0]
            record = await self.directory.find_key(entry.key_hash)
            customer = await self.directory.get(record.customer) if record is not None else None
            self._entries.pop(0)
            if record is None or customer is None:
                self.dropped += 1
                log.warning(
                    "usage served for an unknown API key (prefix of hash %s) is not counted", entry.key_hash[:15]
                )
                continue
            period = period_for(entry.moment, customer.anchor_day)
            row = UsageRow(entry.route, entry.listed, record.key_id, entry.weight, entry.records)
            await self.store.flush(Flush(customer.id, period.id, period.end_ts, day_id(entry.moment), (row,), 0, 0))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._entries:
            try:
                await self.resolve()
            except StoreError:
                self.dropped += len(self._entries)
                log.error("%d requests served while the store was away could not be counted", len(self._entries))
