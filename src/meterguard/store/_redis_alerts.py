"""The alert queue (store.base.AlertQueue) on Redis and Redis Cluster, as a mixin of RedisStore.

Layout, every key under the one hash tag ``{alerts}`` so that each step below is single-slot
on a cluster (alerts are rare: one slot carries them easily)::

    <prefix>:{alerts}:claim:<customer>:<period>:<name>  string  "1", SET NX with a 400-day expiry
    <prefix>:{alerts}:due                               zset    delivery id -> due at (epoch seconds)
    <prefix>:{alerts}:body                              hash    delivery id -> JSON body
    <prefix>:{alerts}:attempts                          hash    delivery id -> failed attempts
    <prefix>:{alerts}:created                           hash    delivery id -> queued at (epoch seconds)

A claim and the queueing of its delivery are one script, so a crash cannot claim an alert
and lose its webhook. Leasing is moving a due delivery's score forward by the lease: another
deliverer sees it again only if this one died before finishing or rescheduling it.

The scripts are short and live here until store/lua/ takes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from redis import exceptions as redis_errors

from ._redis_client import RedisBase, translated
from .base import Delivery

_CLAIM = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
  redis.call('HSET', KEYS[4], ARGV[2], '0')
  redis.call('HSET', KEYS[5], ARGV[2], ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[2])
end
return 1
"""

_LEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local until_at = tonumber(ARGV[1]) + tonumber(ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('HGET', KEYS[2], id)
  if body then
    redis.call('ZADD', KEYS[1], string.format('%.6f', until_at), id)
    out[#out + 1] = {id, body, redis.call('HGET', KEYS[3], id) or '0', redis.call('HGET', KEYS[4], id) or '0'}
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

_RETRY = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return 1
"""

_FINISH = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""

_SHA = {text: hashlib.sha1(text.encode()).hexdigest() for text in (_CLAIM, _LEASE, _RETRY, _FINISH)}


class RedisAlerts(RedisBase):
    """AlertQueue for RedisStore."""

    def _alerts_key(self, name: str) -> str:
        return f"{self._prefix}:{{alerts}}:{name}"

    def _alert_keys(self) -> list[str]:
        return [self._alerts_key(name) for name in ("due", "body", "attempts", "created")]

    async def _alerts_eval(self, text: str, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        client = self._client()
        with translated():
            try:
                return await client.evalsha(_SHA[text], len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                return await client.eval(text, len(keys), *keys, *args)

    async def claim_alert(
        self, customer: str, period_id: str, name: str, delivery: Delivery | None, due_at: float, keep_seconds: int
    ) -> bool:
        claim = self._alerts_key(f"claim:{quote(customer, safe='')}:{period_id}:{quote(name, safe='')}")
        args: list[str | int | float] = [keep_seconds, "", "", 0, 0]
        if delivery is not None:
            args = [keep_seconds, delivery.id, delivery.payload, repr(due_at), repr(delivery.created_at)]
        return int(await self._alerts_eval(_CLAIM, [claim, *self._alert_keys()], args)) == 1

    async def due_deliveries(self, now: float, limit: int, lease_seconds: float) -> list[Delivery]:
        due, body, attempts, created = self._alert_keys()
        reply = await self._alerts_eval(_LEASE, [due, body, attempts, created], [repr(now), limit, repr(lease_seconds)])
        return [Delivery(str(i), str(b), int(a), float(c)) for i, b, a, c in reply or ()]

    async def retry_delivery(self, delivery_id: str, due_at: float, attempts: int) -> None:
        due, _, attempts_key, _ = self._alert_keys()
        await self._alerts_eval(_RETRY, [due, attempts_key], [delivery_id, repr(due_at), attempts])

    async def finish_delivery(self, delivery_id: str) -> None:
        await self._alerts_eval(_FINISH, self._alert_keys(), [delivery_id])


__all__ = ["RedisAlerts"]
