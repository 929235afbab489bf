"""Customers and keys: the store's records, with the static customers of plans.yaml underneath.

A customer written in plans.yaml is config, not state: its plan follows the file. A change
made through the admin API or CLI (plan, status, spend cap) is written to the store as a record
of its own, which from then on takes precedence over the file for that customer.

A plan change is kept twice: in the customer's ``plan_history`` (what statements read: the
plan in force at a period's end, without scanning the event stream) and as a ``plan`` event in
the customer's audit stream (what an export or an auditor reads).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import replace
from decimal import Decimal

from ._types import Clock
from .config import Config
from .errors import CustomerExists, CustomerNotFound, KeyNotActive, KeyNotFound, PlanNotFound, StoreError
from .keys import display_prefix, generate_key, hash_key, key_id_for
from .store.base import EVENT_VERSION, CustomerRecord, CustomerStatus, KeyRecord, Store

log = logging.getLogger("meterguard")

MAX_PLAN_HISTORY = 240  # twenty years of monthly changes; older entries only matter to old statements
MAX_GRACE_SECONDS = 90 * 86_400  # a rotated-out key that lives on for months is not rotated
MAX_KEY_LIFETIME_SECONDS = 100 * 365 * 86_400  # an expiry further out is a typo, not a policy


class Keep(enum.Enum):
    KEEP = "keep"


KEEP = Keep.KEEP  # "leave as it is", where None is a value (no per-customer spend cap)


def check_expiry(expires_at: float | None, now: float) -> None:
    """ValueError unless ``expires_at`` is None or in the future, within MAX_KEY_LIFETIME_SECONDS."""
    if expires_at is None:
        return
    if expires_at <= now:
        raise ValueError("the expiry is not in the future")
    if expires_at - now > MAX_KEY_LIFETIME_SECONDS:
        raise ValueError("the expiry is more than 100 years away")


def plan_at(record: CustomerRecord, moment: float) -> str:
    """The plan in force at ``moment``: the last change made before it.

    Periods are half-open, so a change made exactly at a period's end belongs to the next one.
    Before the first recorded change, the first recorded plan; with no history, the current plan.
    """
    if not record.plan_history:
        return record.plan
    plan = record.plan_history[0][1]
    for changed_at, name in record.plan_history:
        if changed_at >= moment:
            break
        plan = name
    return plan


class Directory:
    def __init__(self, config: Config, store: Store, *, clock: Clock = time.time) -> None:
        self.config = config
        self.store = store
        self._clock = clock
        self._static_keys: dict[str, KeyRecord] = {
            key_hash: KeyRecord(key_id_for(key_hash), customer.id, "(plans.yaml)", 0.0)
            for customer in config.customers.values()
            for key_hash in customer.keys
        }

    def _static(self, customer: str) -> CustomerRecord | None:
        static = self.config.customers.get(customer)
        if static is None:
            return None
        return CustomerRecord(static.id, static.plan, static.status, static.anchor_day or 1, 0.0)

    async def get(self, customer: str) -> CustomerRecord | None:
        return await self.store.get_customer(customer) or self._static(customer)

    async def require(self, customer: str) -> CustomerRecord:
        record = await self.get(customer)
        if record is None:
            raise CustomerNotFound(customer)
        return record

    async def all(self) -> list[CustomerRecord]:
        stored = {record.id: record for record in await self.store.list_customers()}
        for customer in self.config.customers:
            if customer not in stored:
                static = self._static(customer)
                assert static is not None
                stored[customer] = static
        return sorted(stored.values(), key=lambda record: record.id)

    def _check_plan(self, plan: str) -> None:
        if plan not in self.config.plans:
            raise PlanNotFound(plan)

    async def create(self, customer: str, plan: str, anchor_day: int | None = None) -> CustomerRecord:
        self._check_plan(plan)
        if customer in self.config.customers:
            raise CustomerExists(customer)
        if anchor_day is None:
            # Under an anniversary anchor the customer's periods start on the day they joined.
            anchor_day = time.gmtime(self._clock()).tm_mday if self.config.anchor == "anniversary" else 1
        now = self._clock()
        # No history yet: the first plan change records the plan the customer had since created_at.
        record = CustomerRecord(customer, plan, "active", anchor_day, now)
        await self.store.create_customer(record)
        return record

    async def update(
        self,
        customer: str,
        *,
        plan: str | None = None,
        status: CustomerStatus | None = None,
        spend_cap: Decimal | None | Keep = KEEP,
    ) -> CustomerRecord:
        """Change a customer's plan, status or own spend cap (``None``: back to the plan's cap)."""
        record = await self.require(customer)
        if plan is not None and plan != record.plan:
            self._check_plan(plan)
            now = self._clock()
            history = record.plan_history or ((record.created_at, record.plan),)
            history = (*history, (now, plan))[-MAX_PLAN_HISTORY:]
            # The event first: if the record cannot be written after it, a retry repeats the event,
            # and an audit trail that says a change twice is better than one that misses it.
            await self.store.append_event(
                customer,
                {
                    "v": EVENT_VERSION,
                    "type": "plan",
                    "customer": customer,
                    "ts": f"{now:.6f}",
                    "plan": plan,
                    "previous": record.plan,
                },
            )
            record = replace(record, plan=plan, plan_history=history)
        if status is not None:
            record = replace(record, status=status)
        if not isinstance(spend_cap, Keep):
            if spend_cap is not None and (not spend_cap.is_finite() or spend_cap < 0):
                raise ValueError(f"spend cap must be an amount >= 0, not {spend_cap}")
            record = replace(record, spend_cap=spend_cap)
        await self.store.put_customer(record)
        await self._announce(f"customer:{customer}")
        return record

    async def issue_key(self, customer: str, expires_at: float | None = None) -> tuple[KeyRecord, str]:
        """A new key for ``customer``: the record, and the key itself, shown this once.

        ``expires_at`` (epoch seconds): from then on the key is refused; ValueError unless it is
        in the future and within MAX_KEY_LIFETIME_SECONDS.
        """
        await self.require(customer)
        now = self._clock()
        check_expiry(expires_at, now)
        key = generate_key()
        key_hash = hash_key(key)
        record = KeyRecord(key_id_for(key_hash), customer, display_prefix(key), now, expires_at=expires_at)
        await self.store.add_key(key_hash, record)
        return record, key

    async def rotate_key(
        self, key_id: str, grace_seconds: float, expires_at: float | None = None
    ) -> tuple[KeyRecord, str, KeyRecord]:
        """A new key in place of ``key_id``: ``(new record, new key, old record)``.

        The new key works at once; the old one until ``grace_seconds`` from now (or its own
        expiry, if sooner). The new key is issued first: if the old one cannot be updated after
        it, the customer has two working keys, never none.
        """
        if any(record.key_id == key_id for record in self._static_keys.values()):
            raise KeyNotFound(f"{key_id} is written in plans.yaml; replace it there")
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise ValueError(f"the grace period is at most {MAX_GRACE_SECONDS // 86_400} days")
        old = await self.store.get_key(key_id)
        if old is None:
            raise KeyNotFound(key_id)
        now = self._clock()
        state = old.state(now)
        if state in ("revoked", "expired"):
            raise KeyNotActive(f"{key_id} is {state}: issue a new key instead of rotating it")
        record, key = await self.issue_key(old.customer, expires_at)
        ends = now + grace_seconds if old.expires_at is None else min(old.expires_at, now + grace_seconds)
        await self.store.expire_key(key_id, ends, record.key_id)
        await self._announce(f"key:{key_id}")
        return record, key, replace(old, expires_at=ends, replaced_by=record.key_id)

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        return self._static_keys.get(key_hash) or await self.store.find_key(key_hash)

    async def list_keys(self, customer: str) -> list[KeyRecord]:
        await self.require(customer)
        static = [record for record in self._static_keys.values() if record.customer == customer]
        return static + await self.store.list_keys(customer)

    async def revoke_key(self, key_id: str) -> None:
        if any(record.key_id == key_id for record in self._static_keys.values()):
            raise KeyNotFound(f"{key_id} is written in plans.yaml; remove it there")
        if not await self.store.revoke_key(key_id):
            raise KeyNotFound(key_id)
        await self._announce(f"key:{key_id}")

    async def _announce(self, event: str) -> None:
        # Every gateway process drops its cached lookups on this event. If it cannot be sent,
        # the caches' one-second lifetime still bounds how long the old state is served.
        try:
            await self.store.notify(event)
        except StoreError as exc:
            log.warning("could not announce %s to other processes: %s", event, exc)
