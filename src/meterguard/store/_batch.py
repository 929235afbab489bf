"""Micro-batching: the metering operations of one event-loop tick travel in one script call.

One EVALSHA per request costs a round trip and a command each; at 32 requests in flight most
of them are queued behind each other anyway. Here every operation submitted during one tick
joins a batch that is sent when the tick ends, as one call per group (per hash slot on a
cluster). A batch already in flight does not hold the next one back, so no operation waits more
than one round trip longer than it would alone. Each operation stays atomic on its own.

The batch runs in a task of its own: a request cancelled while it waits (a client that went
away) abandons only its future; the connection, and every other reply on it, is untouched
(the redis-py cancellation CVEs, 2023-28858/28859).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError

MAX_BATCH = 64  # operations per script call: longer scripts hold the Redis event loop too long


@dataclass(frozen=True, slots=True)
class Op:
    code: str
    keys: list[str]
    args: list[str | int | float]


Runner = Callable[[Sequence[Op]], Awaitable[tuple[list[Any], float]]]


class Batcher:
    def __init__(self, run: Runner, group: Callable[[Op], int]) -> None:
        self._run = run
        self._group = group
        self._queue: list[tuple[Op, asyncio.Future[tuple[Any, float]]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, op: Op) -> tuple[Any, float]:
        """The operation's reply and the store's clock, once its batch has run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Any, float]] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._send)
        self._queue.append((op, future))
        if len(self._queue) >= MAX_BATCH:
            self._send()
        return await future

    def _send(self) -> None:
        queued, self._queue = self._queue, []
        if not queued:
            return
        groups: dict[int, list[tuple[Op, asyncio.Future[tuple[Any, float]]]]] = {}
        for entry in queued:
            groups.setdefault(self._group(entry[0]), []).append(entry)
        for entries in groups.values():
            task = asyncio.ensure_future(self._execute(entries))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, entries: list[tuple[Op, asyncio.Future[tuple[Any, float]]]]) -> None:
        try:
            results, now = await self._run([op for op, _ in entries])
        except BaseException as exc:  # noqa: B036 - handed to every waiter, then re-raised if fatal
            for _, future in entries:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else StoreError("batch cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(entries, results, strict=True):
            if future.done():
                continue  # its request was cancelled; the operation ran all the same
            if isinstance(result, list) and len(result) == 2 and result[0] == "err":
                future.set_exception(StoreError(f"store script error: {result[1]}"))
            else:
                future.set_result((result, now))

    async def drain(self) -> None:
        """Send what is queued and wait for every batch in flight (at shutdown)."""
        self._send()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
