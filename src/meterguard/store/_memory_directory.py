"""The memory store's customers, keys, alert queue and change events: what it holds beside usage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

from ..errors import CustomerExists
from .base import CustomerRecord, Delivery, KeyRecord


class MemoryDirectory:
    """MemoryStore's base: everything of the Store protocol that is not metering."""

    def __init__(self) -> None:
        self._customers: dict[str, CustomerRecord] = {}
        self._keys: dict[str, KeyRecord] = {}  # hash -> record
        self._key_ids: dict[str, str] = {}  # key id -> hash
        self._last_used: dict[str, float] = {}  # key id -> epoch seconds (written by admissions)
        self._watchers: list[Callable[[str], None]] = []
        self._alert_claims: set[tuple[str, str, str]] = set()
        self._deliveries: dict[str, tuple[Delivery, float]] = {}  # id -> (delivery, due at)

    # customers and keys -----------------------------------------------------------------------------

    async def create_customer(self, record: CustomerRecord) -> None:
        if record.id in self._customers:
            raise CustomerExists(record.id)
        self._customers[record.id] = record

    async def get_customer(self, customer: str) -> CustomerRecord | None:
        return self._customers.get(customer)

    async def list_customers(self) -> list[CustomerRecord]:
        return sorted(self._customers.values(), key=lambda record: record.id)

    async def put_customer(self, record: CustomerRecord) -> None:
        self._customers[record.id] = record

    async def add_key(self, key_hash: str, record: KeyRecord) -> None:
        self._keys[key_hash] = record
        self._key_ids[record.key_id] = key_hash

    def _with_last_used(self, record: KeyRecord) -> KeyRecord:
        used = self._last_used.get(record.key_id)
        return record if used is None else replace(record, last_used=used)

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        record = self._keys.get(key_hash)
        return self._with_last_used(record) if record is not None else None

    async def list_keys(self, customer: str) -> list[KeyRecord]:
        return sorted(
            (self._with_last_used(record) for record in self._keys.values() if record.customer == customer),
            key=lambda record: record.created_at,
        )

    async def revoke_key(self, key_id: str) -> bool:
        key_hash = self._key_ids.get(key_id)
        if key_hash is None:
            return False
        self._keys[key_hash] = replace(self._keys[key_hash], revoked=True)
        return True

    async def get_key(self, key_id: str) -> KeyRecord | None:
        key_hash = self._key_ids.get(key_id)
        return self._with_last_used(self._keys[key_hash]) if key_hash is not None else None

    async def expire_key(self, key_id: str, expires_at: float, replaced_by: str | None = None) -> bool:
        key_hash = self._key_ids.get(key_id)
        if key_hash is None:
            return False
        record = self._keys[key_hash]
        self._keys[key_hash] = replace(record, expires_at=expires_at, replaced_by=replaced_by or record.replaced_by)
        return True

    # alert queue ------------------------------------------------------------------------------------

    async def claim_alert(
        self, customer: str, period_id: str, name: str, delivery: Delivery | None, due_at: float, keep_seconds: int
    ) -> bool:
        claim = (customer, period_id, name)
        if claim in self._alert_claims:
            return False
        self._alert_claims.add(claim)
        if delivery is not None:
            self._deliveries[delivery.id] = (delivery, due_at)
        return True

    async def due_deliveries(self, now: float, limit: int, lease_seconds: float) -> list[Delivery]:
        due = sorted((at, delivery.id) for delivery, at in self._deliveries.values() if at <= now)[:limit]
        leased = []
        for _, delivery_id in due:
            delivery, _ = self._deliveries[delivery_id]
            self._deliveries[delivery_id] = (delivery, now + lease_seconds)
            leased.append(delivery)
        return leased

    async def retry_delivery(self, delivery_id: str, due_at: float, attempts: int) -> None:
        entry = self._deliveries.get(delivery_id)
        if entry is not None:
            self._deliveries[delivery_id] = (replace(entry[0], attempts=attempts), due_at)

    async def finish_delivery(self, delivery_id: str) -> None:
        self._deliveries.pop(delivery_id, None)

    # change events ------------------------------------------------------------------------------------

    async def notify(self, event: str) -> None:
        for on_event in list(self._watchers):
            on_event(event)

    async def watch(self, on_event: Callable[[str], None]) -> None:
        self._watchers.append(on_event)
        on_event("*")  # in one process every change is seen: nothing is ever missed
        try:
            await asyncio.Future()  # until cancelled
        finally:
            self._watchers.remove(on_event)
