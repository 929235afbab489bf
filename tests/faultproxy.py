"""A fault-injecting TCP proxy, placed between a client (the gateway, in-process or in worker
processes) and a redis-server, switched between faults while traffic flows.

It runs its own asyncio loop in a background thread, so it serves clients in other processes
and keeps serving while the test's own loop is busy. Every switch is applied in the proxy's
loop and has taken effect when the call returns (the calls are thread-safe; never call them
from inside the proxy's loop).

Modes (``mode`` names the current one):

- ``heal()``: pass-through (the initial mode);
- ``delay(seconds, both=False)``: every server reply (with ``both``, every client command too)
  is held ``seconds`` after it arrived; order is kept;
- ``blackhole()``: connections stay open, nothing is forwarded either way, new connections are
  accepted and hang: a network partition;
- ``drop_replies()``: commands reach the server, replies are discarded: the command runs and
  the client never hears of it;
- ``reset_after(n)``: the next ``n`` bytes from the server (over all connections) are forwarded,
  then the connection about to carry more is reset (RST); a one-shot fault, pass-through after;
- ``reset_all()``: every open connection is reset now; the mode does not change;
- ``refuse()``: new connections are reset as soon as they are accepted; open ones carry on.

A connection that lost bytes (a dropped reply, a discarded command) can never be used again
without handing a reply to the wrong command, so it forwards nothing more in that direction,
and ``heal()`` resets it. Connections that lost nothing carry on; new connections work.
RST is an abortive close (SO_LINGER 0), what a client sees when a server or a middlebox dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
CHUNK = 65536


@dataclass(frozen=True)
class ProxyStats:
    """Counters since start. ``bytes_up``/``bytes_down``: forwarded client->server / server->client;
    ``dropped_up``/``dropped_down``: discarded by a fault."""

    connections: int = 0  # accepted (refused ones included)
    open: int = 0
    refused: int = 0
    resets: int = 0  # connections reset: by a fault, by heal (those that lost bytes), refused ones
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_up: int = 0
    dropped_down: int = 0


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.server: asyncio.StreamWriter | None = None
        self.lost_up = False  # a command was discarded: the server must not see what follows
        self.lost_down = False  # a reply was discarded: the client must not see what follows
        self.closed = False
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def broken(self) -> bool:
        return self.lost_up or self.lost_down


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST: SO_LINGER 0, then close without flushing."""
    if writer is None or writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """``FaultProxy(target_port).start()``; clients connect to ``proxy.port`` (``proxy.url``)."""

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.mode = "pass"
        self._delay = 0.0
        self._delay_up = False
        self._reset_budget: int | None = None
        self._stats = ProxyStats()
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None

    def __repr__(self) -> str:
        return f"<FaultProxy :{self.port} -> {self.target[0]}:{self.target[1]} {self.mode}>"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    # lifecycle --------------------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"faultproxy-{self.target[1]}", daemon=True)
        self._thread.start()
        self._server = self._run(asyncio.start_server(self._accept, self.host, 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        """Close the listener and every connection (RST), then end the thread."""
        if self._loop is None or self._thread is None:
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # faults -----------------------------------------------------------------------------------------

    def heal(self) -> None:
        """Back to pass-through; connections that lost bytes are reset."""
        self._switch("pass", reset_broken=True)

    def delay(self, seconds: float, *, both: bool = False) -> None:
        self._switch("delay", delay=seconds, delay_up=both)

    def blackhole(self) -> None:
        self._switch("blackhole")

    def drop_replies(self) -> None:
        self._switch("drop_replies")

    def reset_after(self, n: int) -> None:
        self._switch("reset_after", budget=n)

    def refuse(self) -> None:
        self._switch("refuse")

    def reset_all(self) -> int:
        """RST every open connection now; returns how many."""
        return self._run(self._reset_links(lambda link: True))

    def stats(self) -> ProxyStats:
        return self._run(self._snapshot())

    # internals: control ---------------------------------------------------------------------------

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def _switch(
        self, mode: str, *, delay: float = 0.0, delay_up: bool = False, budget: int | None = None,
        reset_broken: bool = False,
    ) -> None:  # fmt: skip
        async def apply() -> None:
            self.mode, self._delay, self._delay_up, self._reset_budget = mode, delay, delay_up, budget
            if reset_broken:
                await self._reset_links(lambda link: link.broken)

        self._run(apply())

    async def _snapshot(self) -> ProxyStats:
        return replace(self._stats, open=len(self._links))

    async def _reset_links(self, which: Callable[[_Link], bool]) -> int:
        chosen = [link for link in self._links if which(link)]
        for link in chosen:
            self._close(link, reset=True)
        return len(chosen)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [task for link in self._links for task in link.tasks]
        for link in list(self._links):
            self._close(link, reset=True, count=False)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def _count(self, **changes: int) -> None:
        self._stats = replace(self._stats, **{name: getattr(self._stats, name) + n for name, n in changes.items()})

    def _close(self, link: _Link, *, reset: bool, count: bool = True) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        if reset:
            _abort(link.client)
            _abort(link.server)
            if count:
                self._count(resets=1)
        else:
            link.client.close()
            if link.server is not None:
                link.server.close()
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    # internals: traffic ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count(connections=1)
        if self.mode == "refuse":
            self._count(refused=1, resets=1)
            _abort(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        try:
            server_reader, link.server = await asyncio.open_connection(*self.target)
        except OSError:
            self._close(link, reset=True)  # the server is down: the client sees a reset
            return
        if link.closed:  # reset while connecting
            _abort(link.server)
            return
        up = asyncio.create_task(self._pump(link, reader, upstream=True))
        down = asyncio.create_task(self._pump(link, server_reader, upstream=False))
        link.tasks |= {up, down}
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        self._close(link, reset=False)  # one side closed: close the other (FIN), as a proxy does
        await asyncio.gather(up, down, return_exceptions=True)

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, *, upstream: bool) -> None:
        """Read one direction and decide per chunk; an ordered writer task delivers what passes,
        each chunk at its time (so a delay adds latency without adding up chunk after chunk)."""
        out = link.server if upstream else link.client
        assert out is not None
        queue: asyncio.Queue[tuple[float, bytes] | object] = asyncio.Queue()
        writer = asyncio.create_task(self._deliver(link, queue, out, upstream=upstream))
        link.tasks.add(writer)
        loop = asyncio.get_running_loop()
        end: object = _END
        try:
            while data := await reader.read(CHUNK):
                if self._discard(link, upstream, len(data)):
                    continue
                if not upstream and self._reset_budget is not None:
                    if len(data) > self._reset_budget:
                        if self._reset_budget:
                            queue.put_nowait((0.0, data[: self._reset_budget]))
                        self.mode, self._reset_budget, end = "pass", None, _RESET  # one-shot
                        break
                    self._reset_budget -= len(data)
                delayed = self.mode == "delay" and (self._delay_up or not upstream)
                queue.put_nowait((loop.time() + self._delay if delayed else 0.0, data))
        except (ConnectionError, OSError):
            pass
        queue.put_nowait(end)
        await writer

    def _discard(self, link: _Link, upstream: bool, size: int) -> bool:
        """Whether a chunk is dropped now: by the fault, or because the link lost bytes before."""
        lose = self.mode == "blackhole" or (not upstream and self.mode == "drop_replies")
        if upstream:
            link.lost_up = lose = link.lost_up or lose
        else:
            link.lost_down = lose = link.lost_down or lose
        if lose:
            self._count(**{"dropped_up" if upstream else "dropped_down": size})
        return lose

    async def _deliver(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes] | object], out: asyncio.StreamWriter, *,
        upstream: bool,
    ) -> None:  # fmt: skip
        loop = asyncio.get_running_loop()
        while isinstance(item := await queue.get(), tuple):
            when, data = item
            if when:
                await asyncio.sleep(max(0.0, when - loop.time()))
            if self._discard(link, upstream, len(data)):  # a partition that began while it waited
                continue
            try:
                out.write(data)
                await out.drain()
            except (ConnectionError, OSError):
                return
            self._count(**{"bytes_up" if upstream else "bytes_down": len(data)})
        if item is _RESET:
            # Let the bytes before the cut leave first: an abortive close drops unsent data.
            for _ in range(1000):
                if out.transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.001)
            self._close(link, reset=True)


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[int], FaultProxy]]:
    """``fault_proxy(target_port) -> FaultProxy``, started; every proxy made is stopped at teardown."""
    made: list[FaultProxy] = []

    def make(target_port: int) -> FaultProxy:
        proxy = FaultProxy(target_port)
        made.append(proxy)
        return proxy.start()

    try:
        yield make
    finally:
        for proxy in made:
            proxy.stop()


_END = object()  # the reading side ended: deliver what is queued, then stop
_RESET = object()  # reset_after's cut: deliver what is queued, then RST the link
