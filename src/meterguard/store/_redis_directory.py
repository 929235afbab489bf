"""Customers and keys on Redis, as a mixin of RedisStore (layout: store/redis.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal

from ..errors import CustomerExists
from ._redis_client import RedisBase, load_script, translated
from .base import CustomerRecord, KeyRecord

CREATE_CUSTOMER = load_script("create_customer")


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


class RedisDirectory(RedisBase):
    # customers ------------------------------------------------------------------------------------

    async def create_customer(self, record: CustomerRecord) -> None:
        args = [item for pair in _customer_fields(record).items() for item in pair]
        created = await self._script(CREATE_CUSTOMER, [f"{self._tag(record.id)}:customer"], args)
        if not int(created):
            raise CustomerExists(record.id)
        with translated():
            await self._client().sadd(self._customers_key(), record.id)

    async def get_customer(self, customer: str) -> CustomerRecord | None:
        return _customer(await self._lookups.hgetall(f"{self._tag(customer)}:customer"))

    async def list_customers(self) -> list[CustomerRecord]:
        with translated():
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
        with translated():
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
            "expires_at": "" if record.expires_at is None else repr(record.expires_at),
            "replaced_by": record.replaced_by or "",
        }
        with translated():
            client = self._client()
            # The record first: a key listed in the index always resolves.
            await client.hset(self._key_key(key_hash), mapping=fields)
            await client.hset(self._key_id_key(record.key_id), mapping={"hash": key_hash, "customer": record.customer})
            await client.hset(f"{tag}:keys", record.key_id, key_hash)
            if record.last_used is not None:
                await client.hset(f"{tag}:s", f"u:{record.key_id}", repr(record.last_used))
            else:
                await client.hdel(f"{tag}:s", f"u:{record.key_id}")

    @staticmethod
    def _key_record(fields: Mapping[str, str], last_used: str | None) -> KeyRecord:
        return KeyRecord(
            key_id=fields["key_id"],
            customer=fields["customer"],
            prefix=fields["prefix"],
            created_at=float(fields["created_at"]),
            last_used=float(last_used) if last_used is not None else None,
            revoked=fields.get("revoked") == "1",
            expires_at=float(fields["expires_at"]) if fields.get("expires_at") else None,
            replaced_by=fields.get("replaced_by") or None,
        )

    async def find_key(self, key_hash: str) -> KeyRecord | None:
        fields = await self._lookups.hgetall(self._key_key(key_hash))
        if not fields:
            return None
        with translated():
            last_used: str | None = await self._client().hget(
                f"{self._tag(fields['customer'])}:s", f"u:{fields['key_id']}"
            )
        return self._key_record(fields, last_used)

    async def list_keys(self, customer: str) -> list[KeyRecord]:
        tag = self._tag(customer)
        with translated():
            client = self._client()
            index: dict[str, str] = await client.hgetall(f"{tag}:keys")
            if not index:
                return []
            key_ids = list(index)
            used = dict(zip(key_ids, await client.hmget(f"{tag}:s", [f"u:{k}" for k in key_ids]), strict=True))
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
        with translated():
            client = self._client()
            key_hash: str | None = await client.hget(self._key_id_key(key_id), "hash")
            if key_hash is None:
                return False
            await client.hset(self._key_key(key_hash), "revoked", "1")
        return True

    async def get_key(self, key_id: str) -> KeyRecord | None:
        with translated():
            client = self._client()
            key_hash: str | None = await client.hget(self._key_id_key(key_id), "hash")
            if key_hash is None:
                return None
            fields: dict[str, str] = await client.hgetall(self._key_key(key_hash))
            if not fields:
                return None
            last_used: str | None = await client.hget(f"{self._tag(fields['customer'])}:used", fields["key_id"])
        return self._key_record(fields, last_used)

    async def expire_key(self, key_id: str, expires_at: float, replaced_by: str | None = None) -> bool:
        # Time-based: every gateway refuses the key from expires_at on, whether or not it hears of
        # the change (its cached lookups end at the expiry they read).
        update = {"expires_at": repr(expires_at)}
        if replaced_by is not None:
            update["replaced_by"] = replaced_by
        with translated():
            client = self._client()
            key_hash: str | None = await client.hget(self._key_id_key(key_id), "hash")
            if key_hash is None:
                return False
            await client.hset(self._key_key(key_hash), mapping=update)
        return True
