"""What every part of the Redis stores shares: the client, the key layout, scripts, error mapping.

``RedisBase`` owns the redis-py client (built lazily, closed once) and names every key; the
store's parts (directory, events, alerts, metering) are mixins over it, each in a module of its
own. Backend exceptions are mapped to :class:`~meterguard.errors.StoreError` here and nowhere
else (``translated()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import StoreError, StoreUnavailable
from ..metrics import DISCARD, Metrics
from ._resp import ThinClient, endpoint

DEFAULT_TIMEOUT_SECONDS = 2.0
# Connections per process. The metering path needs one per slot (one batch in flight each) and
# lookups are batched too, so this is room for the admin API and the CLI, not a throughput knob.
# When they are all busy a caller waits (up to the timeout) instead of failing at once.
DEFAULT_MAX_CONNECTIONS = 64
MAX_CACHED_TAGS = 100_000


def socket_timeout(url: str) -> float:
    """``socket_timeout`` of a Redis URL, else the default."""
    for name, value in parse_qsl(urlsplit(url).query):
        if name == "socket_timeout":
            try:
                return float(value)
            except ValueError:
                break
    return DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    text: str
    sha: str


def script(text: str, name: str = "") -> Script:
    return Script(name, text, hashlib.sha1(text.encode()).hexdigest())


def load_script(name: str) -> Script:
    """A script of store/lua/, by file name without ``.lua``."""
    text = resources.files("meterguard.store").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")
    return script(text, name)


def no_retry() -> Retry:
    """A retry policy that never retries: a blind retry of an increment double counts."""
    return Retry(NoBackoff(), 0)


@contextmanager
def translated() -> Iterator[None]:
    """Wrap redis-py's exceptions once, at the store boundary."""
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, redis_errors.ClusterDownError) as exc:
        raise StoreUnavailable(f"store unreachable: {exc}") from exc
    except redis_errors.RedisClusterException as exc:
        # raised when no startup node of a cluster answers
        raise StoreUnavailable(f"store unreachable: {exc}") from exc
    except redis_errors.RedisError as exc:
        raise StoreError(f"store error: {exc}") from exc
    except OSError as exc:  # a socket error that escaped redis-py's own wrapping
        raise StoreUnavailable(f"store unreachable: {exc}") from exc
    except (AttributeError, RuntimeError, ValueError, TypeError, IndexError, KeyError) as exc:
        # A connection closed under a command in flight surfaces from redis-py and uvloop as
        # these ("'NoneType' object has no attribute 'writelines'", "handler is closed"): the
        # configured policy must answer them, never a 500.
        raise StoreUnavailable(f"store connection broke: {exc!r}") from exc


class Lookups:
    """HGETALL of the keys asked for in one event-loop tick, as one pipeline; one read per key.

    A flood of unknown credentials must not take a connection each (redis-py's pool then fails
    every caller with "Too many connections"): identical keys wait for the same read, distinct
    ones share a round trip and a connection.
    """

    def __init__(self, client: Callable[[], Any], drop_idle: Callable[[], Awaitable[None]]) -> None:
        self._client = client
        self._drop_idle = drop_idle
        self._queued: dict[str, asyncio.Future[dict[str, str]]] = {}
        self._inflight: dict[str, asyncio.Future[dict[str, str]]] = {}

    async def hgetall(self, key: str) -> dict[str, str]:
        future = self._inflight.get(key) or self._queued.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            if not self._queued:
                loop.call_soon(self._send)
            future = self._queued[key] = loop.create_future()
        return await asyncio.shield(future)

    def _send(self) -> None:
        batch, self._queued = self._queued, {}
        self._inflight.update(batch)
        task = asyncio.ensure_future(self._read(batch))
        task.add_done_callback(lambda _: None)

    async def _read(self, batch: dict[str, asyncio.Future[dict[str, str]]]) -> None:
        try:
            replies = await self._pipeline(batch)
        except BaseException as exc:  # handed to every waiter
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else StoreUnavailable("lookup cancelled"))
                    future.exception()  # retrieved: a waiter that went away must not log it
            if not isinstance(exc, Exception):
                raise
        else:
            for future, fields in zip(batch.values(), replies, strict=True):
                if not future.done():
                    future.set_result(fields)
        finally:
            for key, future in batch.items():
                if self._inflight.get(key) is future:
                    del self._inflight[key]

    async def _pipeline(self, batch: dict[str, asyncio.Future[dict[str, str]]]) -> list[dict[str, str]]:
        # Reads are safe to repeat: one more try on a fresh connection after a connection error
        # (a restarted Redis leaves every pooled connection dead, the first use of each fails).
        for attempt in (1, 2):
            try:
                with translated():
                    async with self._client().pipeline(transaction=False) as pipe:
                        for key in batch:
                            pipe.hgetall(key)
                        return list(await pipe.execute())
            except StoreUnavailable:
                if attempt == 2:
                    raise
                await self._drop_idle()
        raise AssertionError("unreachable")


class RedisBase:
    """The client and the key layout; see store/redis.py for the layout itself."""

    metrics: Metrics = DISCARD  # a MeterGuard gives it its own

    def __init__(self, url: str, *, key_prefix: str = "mg") -> None:
        self.url = url
        self.timeout = socket_timeout(url)  # also the budget of one admission, and of a settlement's wait
        self._prefix = key_prefix
        self._redis: Any = None
        self._thins: dict[str, ThinClient] = {}  # the hot script's connections (_hot_script), by server
        # The server of a URL the thin client serves (parsing only, no I/O); None: redis-py does.
        self._thin_server = endpoint(url, timeout=self.timeout, connect_timeout=DEFAULT_TIMEOUT_SECONDS)
        self._tags: dict[str, str] = {}  # customer -> hash tag base, quoted once
        self._closed = False
        self._lookups = Lookups(self._client, self._drop_idle_connections)
        self.events_keep_exported = 86_400  # seconds an event outlives its export (configure_ledger)

    # connection -----------------------------------------------------------------------------------

    def _connect(self) -> Any:
        """Build the client (no I/O). The cluster store overrides only this."""
        pool = BlockingConnectionPool.from_url(
            self.url,
            decode_responses=True,
            retry=no_retry(),
            socket_timeout=DEFAULT_TIMEOUT_SECONDS,
            socket_connect_timeout=DEFAULT_TIMEOUT_SECONDS,
            max_connections=DEFAULT_MAX_CONNECTIONS,
            timeout=self.timeout,  # the wait for a free connection
        )  # URL query parameters override these
        return Redis.from_pool(pool)  # the client owns the pool: closing it closes the connections

    def _client(self) -> Any:
        if self._closed:
            # Late work of a closed gateway (a background task) must not open new connections.
            raise StoreUnavailable("the store has been closed")
        if self._redis is None:
            self._redis = self._connect()
        return self._redis

    async def _drop_idle_connections(self) -> None:
        """After a connection error every idle pooled connection is suspect: a Redis that
        restarted closed them all, and each would fail its next caller in turn. (The cluster
        client does the same per node by itself.)"""
        pool = getattr(self._redis, "connection_pool", None)
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.disconnect(inuse_connections=False)

    def _thin_client(self) -> ThinClient | None:
        """The hot script's client (store/_resp.py), None where the URL needs redis-py for it."""
        if self._closed:
            raise StoreUnavailable("the store has been closed")
        if self._thin_server is None:
            return None
        thin = self._thins.get("")
        if thin is None:
            thin = self._thins[""] = ThinClient(self._thin_server)
        return thin

    async def _hot_script(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int | float]) -> Any:
        """``_script`` for the call every request makes (METER), on the thin client where it serves the URL."""
        thin = self._thin_client()
        if thin is None:
            return await self._script(script, keys, args)
        return await self._thin_script(thin, script, keys, args)

    @staticmethod
    async def _thin_script(
        thin: ThinClient, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int | float]
    ) -> Any:
        with translated():  # error replies arrive as redis-py's exceptions; the connection's own are StoreUnavailable
            try:
                return await thin.call("EVALSHA", script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                # The script did not run; EVAL runs it once and caches it on the server again.
                return await thin.call("EVAL", script.text, len(keys), *keys, *args)

    async def _close_clients(self) -> None:
        """Close redis-py's client and the thin clients (after ``_closed`` is set)."""
        thins, self._thins = list(self._thins.values()), {}
        for thin in thins:
            await thin.aclose()
        client, self._redis = self._redis, None
        if client is not None:
            with translated():
                await client.aclose()

    async def _script(self, script: Script, keys: Sequence[str], args: Sequence[bytes | str | int | float]) -> Any:
        client = self._client()
        try:
            with translated():
                try:
                    return await client.evalsha(script.sha, len(keys), *keys, *args)
                except redis_errors.NoScriptError:
                    # The script did not run; EVAL runs it once and caches it on that node again.
                    return await client.eval(script.text, len(keys), *keys, *args)
        except StoreUnavailable:
            await self._drop_idle_connections()
            raise

    # keys -----------------------------------------------------------------------------------------

    def _tag(self, customer: str) -> str:
        tag = self._tags.get(customer)
        if tag is None:
            if len(self._tags) > MAX_CACHED_TAGS:
                self._tags.clear()
            tag = self._tags[customer] = f"{self._prefix}:{{c:{quote(customer, safe='')}}}"
        return tag

    def _period_key(self, customer: str, period_id: str) -> str:
        return f"{self._tag(customer)}:p:{period_id}"

    def _day_key(self, customer: str, day: str) -> str:
        return f"{self._tag(customer)}:d:{day}"

    def _customers_key(self) -> str:
        return f"{self._prefix}:customers"

    def _key_key(self, key_hash: str) -> str:
        return f"{self._prefix}:key:{key_hash}"

    def _key_id_key(self, key_id: str) -> str:
        return f"{self._prefix}:keyid:{key_id}"

    def _events_key(self, customer: str) -> str:
        return f"{self._tag(customer)}:events"
