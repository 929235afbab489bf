"""Idempotency-Key records on Redis: the first response, stored for its repeats (a mixin of RedisStore).

The admission script (store/lua/meter.lua) marks a key ``run`` with the request's fingerprint;
this stores the response under the same key when the first request ends (``done``), or forgets
the key when the response cannot be replayed. Both are idempotent writes, retried briefly.
"""

from __future__ import annotations

import asyncio
import base64
import json

from ..errors import StoreError
from ._redis_client import RedisBase, script, translated
from ._redis_meter_wire import idempotency_digest
from .base import StoredResponse

# KEYS[1] the key's hash; ARGV fingerprint, "done" | "forget", response JSON, ttl seconds.
# Only the request that holds the key (same fingerprint, still running) may finish it.
_FINISH = script(
    """
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'st') ~= 'run' then return 0 end
if ARGV[2] == 'forget' then redis.call('DEL', KEYS[1]) return 1 end
redis.call('HSET', KEYS[1], 'st', 'done', 'resp', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
""",
    "finish_idempotent",
)
ATTEMPTS = 3


def _encode(response: StoredResponse) -> str:
    return json.dumps(
        {
            "status": response.status,
            "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in response.headers],
            "body": base64.b64encode(response.body).decode("ascii"),
        },
        separators=(",", ":"),
    )


def _decode(text: str) -> StoredResponse:
    data = json.loads(text)
    headers = tuple((name.encode("latin-1"), value.encode("latin-1")) for name, value in data["headers"])
    return StoredResponse(int(data["status"]), headers, base64.b64decode(data["body"]))


class RedisIdempotency(RedisBase):
    def _idempotency_key(self, customer: str, key: str) -> str:
        return f"{self._tag(customer)}:i:{idempotency_digest(key)}"

    async def finish_idempotent(
        self, customer: str, key: str, fingerprint: str, response: StoredResponse | None, ttl_seconds: int
    ) -> None:
        mode, body = ("forget", "") if response is None else ("done", _encode(response))
        args: list[str | int | float] = [fingerprint, mode, body, ttl_seconds]
        for attempt in range(ATTEMPTS):
            try:
                await self._script(_FINISH, [self._idempotency_key(customer, key)], args)
                return
            except StoreError:
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    async def stored_response(self, customer: str, key: str) -> StoredResponse | None:
        with translated():
            text: str | None = await self._client().hget(self._idempotency_key(customer, key), "resp")
        return None if text is None else _decode(text)
