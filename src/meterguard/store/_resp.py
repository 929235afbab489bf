"""A thin RESP client for the one hot call of exact mode: the METER script of a ledger batch (issue 12).

redis-py costs ~80 µs of client CPU per round trip (its pool, its per-command machinery, its
parser's async reads), ~30 µs more than the socket work itself; exact mode makes one such call
per batch, for admissions and again for settlements. This is one connection per server on an
``asyncio.Protocol``: commands written at once (pipelined when callers overlap), replies parsed
by hiredis (what redis-py parses with) and handed out in the order the commands went.

* Cancellation: a caller that goes away leaves its future in the queue, and the reply it would
  have had is read and dropped, so the next caller still gets its own.
* A reply that does not come within the timeout, or a connection that breaks, closes the
  connection and fails every waiter with StoreUnavailable; the next call connects again. What
  was sent may have run: the ledger resends the same batch (same writer and sequence), which
  the script answers from its record (store/_ledger.py).
* Error replies become redis-py's own exceptions (its parser's table), so ``translated()``
  maps them exactly as it maps redis-py's.

Only plain ``redis://host:port/db`` URLs with a username, password, ``socket_timeout`` and
``socket_connect_timeout`` are served here (``endpoint()``); TLS, unix sockets and every other
option keep the whole store on redis-py. Nothing else goes through this client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import parse_url

from ..errors import StoreUnavailable
from ._budgets import EARLY_SECONDS

# Module level so that benchmarks/_count.py can count the commands sent here, as it does in redis-py.
pack_command = hiredis.pack_command

# What parse_url() may return for a URL served here. max_connections sizes redis-py's pool,
# which still serves everything else; it means nothing to one pipelined connection.
SUPPORTED_OPTIONS = frozenset(
    {"host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout", "max_connections"}
)
_MORE = object()  # hiredis: not a whole reply yet (False would be ambiguous under RESP3)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    timeout: float  # for each reply
    connect_timeout: float  # for the connection and its AUTH and SELECT

    def __repr__(self) -> str:  # never show the password
        return f"Endpoint({self.host}:{self.port}/{self.db})"


def endpoint(url: str, *, timeout: float, connect_timeout: float) -> Endpoint | None:
    """The server of a plain ``redis://`` URL; None when the URL asks for what only redis-py does."""
    if urlsplit(url).scheme != "redis":
        return None
    try:
        options: dict[str, Any] = dict(parse_url(url))
    except ValueError:
        return None
    if not options.keys() <= SUPPORTED_OPTIONS:
        return None
    return Endpoint(
        host=str(options.get("host", "localhost")),
        port=int(options.get("port", 6379)),
        db=int(options.get("db", 0)),
        username=options.get("username") or None,
        password=options.get("password") or None,
        timeout=float(options.get("socket_timeout") or timeout),
        connect_timeout=float(options.get("socket_connect_timeout") or connect_timeout),
    )


class Connection(asyncio.Protocol):
    """One connection: a FIFO of waiters, each with the time its reply is due by."""

    def __init__(self, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(encoding="utf-8", replyError=BaseParser.parse_error, notEnoughData=_MORE)
        self._waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        # One timer at the oldest waiter's due time, not one per command (~2.5 µs each to arm
        # and cancel): replies come in order, so the oldest is the first to be overdue.
        self._watch: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.close(StoreUnavailable(f"store sent an unreadable reply: {exc}"))
                return
            if reply is _MORE:
                return
            if not self._waiters:
                self.close(StoreUnavailable("store sent a reply nobody asked for"))
                return
            future, _ = self._waiters.popleft()
            if not future.done():  # else its caller went away: the reply is read and dropped
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(StoreUnavailable(f"store connection lost: {exc or 'closed by the server'}"))
        if not self._lost.done():
            self._lost.set_result(None)

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """Write one command; the future gets its reply (an exception instance for an error reply)."""
        if self.closed or self._transport is None:
            raise StoreUnavailable("store connection closed")
        command = pack_command(args)  # first: a command that cannot be packed must leave no waiter behind
        future = self.loop.create_future()
        # Per command, not per caller: a reply overdue even for a caller that left means the
        # connection is stuck (a paused or partitioned server), and every later reply is behind it.
        due = self.loop.time() + self._timeout
        self._waiters.append((future, due))
        if self._watch is None:
            self._watch = self.loop.call_at(due, self._check_overdue)
        self._transport.write(command)
        return future

    def _check_overdue(self) -> None:
        self._watch = None
        if self.closed or not self._waiters:
            return
        due = self._waiters[0][1]
        if due <= self.loop.time() + EARLY_SECONDS:
            self.close(StoreUnavailable(f"store did not reply within {self._timeout}s"))
        else:
            self._watch = self.loop.call_at(due, self._check_overdue)

    def close(self, error: Exception) -> None:
        """Fail every waiter; abort, not close: a stuck server would never take the write buffer."""
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.abort()
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
        while self._waiters:
            future, _ = self._waiters.popleft()
            if not future.done():
                future.set_exception(error)

    async def wait_closed(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._lost), timeout)


class ThinClient:
    """Commands to one server over one connection, opened on first use and after a failure."""

    def __init__(self, server: Endpoint) -> None:
        self.server = server
        self._connection: Connection | None = None
        self._closed = False

    async def call(self, *args: str | int | float | bytes) -> Any:
        """The reply; raises redis-py's exception for an error reply, StoreUnavailable for the rest."""
        connection = self._connection
        if connection is None or connection.closed or connection.loop is not asyncio.get_running_loop():
            connection = await self._connect()
        reply = await connection.send(args)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _connect(self) -> Connection:
        if self._closed:
            raise StoreUnavailable("the store has been closed")
        server = self.server
        connection: Connection | None = None
        try:
            async with asyncio.timeout(server.connect_timeout):
                _, connection = await asyncio.get_running_loop().create_connection(
                    lambda: Connection(server.timeout), server.host, server.port
                )
                if server.password is not None:
                    auth = (server.username, server.password) if server.username else (server.password,)
                    await self._setup(connection, ("AUTH", *auth))
                if server.db:
                    await self._setup(connection, ("SELECT", server.db))
        except (OSError, TimeoutError) as exc:
            if connection is not None:
                connection.close(StoreUnavailable("connection setup failed"))
            raise StoreUnavailable(f"store unreachable: {exc!r}") from exc
        except BaseException:
            if connection is not None:
                connection.close(StoreUnavailable("connection setup cancelled"))
            raise
        if self._closed:
            connection.close(StoreUnavailable("the store has been closed"))
            raise StoreUnavailable("the store has been closed")
        # Callers that found no connection at once each open one: the last opened is kept, the
        # others serve the command they were opened for and are closed once it is answered.
        previous, self._connection = self._connection, connection
        if previous is not None and not previous.closed:
            if previous.loop is connection.loop:
                connection.loop.call_later(server.timeout, previous.close, StoreUnavailable("replaced"))
            else:  # a connection of an event loop that ended (a second asyncio.run): nothing waits on it
                with contextlib.suppress(RuntimeError):
                    previous.close(StoreUnavailable("event loop changed"))
        return connection

    @staticmethod
    async def _setup(connection: Connection, command: tuple[Any, ...]) -> None:
        reply = await connection.send(command)
        if isinstance(reply, Exception):
            connection.close(StoreUnavailable("connection setup refused"))
            raise StoreUnavailable(f"store refused {command[0]}: {reply}")

    async def aclose(self) -> None:
        """Close the connection; later calls raise StoreUnavailable."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close(StoreUnavailable("the store has been closed"))
            if connection.loop is asyncio.get_running_loop():
                await connection.wait_closed(1.0)
