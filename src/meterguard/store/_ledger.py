"""The write path: every metering write is sent with an id and retried until it is settled.

A gateway process is one *writer* (a random id). Its writes travel in batches, one batch in
flight per group (a hash slot on a cluster, the whole server otherwise), each batch numbered by
a sequence that only grows. The store records per customer the last sequence applied and its
replies (store/lua/meter.lua), which makes every retry safe:

* A batch is retried, unchanged, on timeouts, resets, MOVED/ASK/TRYAGAIN and failovers. A
  repeat of a batch that already ran returns the recorded replies and applies nothing.
* Admissions have a deadline: the request is waiting. Past it the writer gives up (the request
  is answered 503, or served unmetered under ``fail_open``), and the store voids the batch's
  admissions if it runs later. A batch given up on is *carried* by every later batch of the
  group until one is acknowledged: if it did run, its admissions are undone (or, when the
  request was served anyway, kept); if it did not, it never will, and its usage rows apply now.
* Usage rows (records of a response, fast-path flushes, usage served while the store was away)
  have no deadline: they stay here until acknowledged, merged per customer, period and day, and
  optionally spooled to disk (store/_spool.py). What does not fit is counted as ``unmetered``.

The encoding of batches and the reading of replies belong to the store (store/_redis_meter_wire.py);
the entries themselves (admissions, usage rows, carries, replies) are store/_ledger_entries.py;
this module owns the sequencing, the retries and the bookkeeping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import StoreError
from ._ledger_entries import Admission, Carry, Expired, Pending, Reply, Runner, Usage, UsageKey, Work, served_usage
from ._spool import Spool, Spooled
from .base import AdmitRequest

log = logging.getLogger("meterguard.ledger")

MAX_USAGES = 64  # usage entries per batch (admissions all go): a longer script holds Redis too long
RETRY_FIRST_SECONDS = 0.01
RETRY_MAX_SECONDS = 0.25  # after an outage, the first batch goes out within this of the store's return
SPOOL_SECONDS = 0.5  # while the store fails, the ledger is written to disk this often (and before sends)


@dataclass(slots=True)
class _Group:
    queue: deque[Pending] = field(default_factory=deque)
    usages: dict[UsageKey, Usage] = field(default_factory=dict)
    carries: dict[str, list[Carry]] = field(default_factory=dict)
    sender: asyncio.Task[None] | None = None
    inflight: list[Work] | None = None
    inflight_seq: int = 0
    timer: asyncio.TimerHandle | None = None  # fails queued admissions at their budget's end

    def has_work(self) -> bool:
        return bool(self.queue or self.usages or self.carries)


class Ledger:
    """Sequenced, retried, exactly-once metering writes of one writer (a gateway process)."""

    def __init__(
        self,
        run: Runner,
        group_of: Callable[[str], int],
        *,
        admit_seconds: float,
        max_entries: int = 100_000,
        writer: str | None = None,
        first_seq: int = 1,
        spool: Spool | None = None,
    ) -> None:
        self._run = run
        self._group_of = group_of
        self.admit_seconds = admit_seconds
        self.max_entries = max_entries
        self.writer = writer or uuid.uuid4().hex[:16]
        self._seq = first_seq - 1
        self._groups: dict[int, _Group] = {}
        # The store's clock minus the loop's, a lower bound from the last reply (the reply was
        # made before it arrived). Before any reply: the wall clock, usually the same as Redis's.
        self._offset = time.time() - time.monotonic()
        self.unmetered_dropped = 0  # usage that found no room at all (not even an unmetered count)
        self._closed = False
        self.spool = spool
        self._failing = False  # the last attempt failed: the store is away
        self._spooler: asyncio.Task[None] | None = None

    # what the store calls ------------------------------------------------------------------------

    async def admit(self, request: AdmitRequest, *, served: bool) -> tuple[list[Any], float]:
        """The admission's reply and the store's clock; StoreUnavailable (Expired) past the budget.

        ``served``: the caller serves the request if this fails (``fail_open``), so whatever
        becomes of it, its call is counted once.
        """
        loop = asyncio.get_running_loop()
        group = self._group(request.customer)
        future: asyncio.Future[tuple[list[Any], float]] = loop.create_future()
        give_up = loop.time() + self.admit_seconds
        group.queue.append(Pending(Admission(request, served), future, give_up))
        self._kick(group)
        if group.timer is None:
            # The sender may be busy with a batch that has no deadline (usage only, retried until
            # Redis answers): whatever it waits for, a queued admission ends at its budget.
            group.timer = loop.call_at(give_up, self._on_timer, group)
        return await future

    def record(self, usage: Usage) -> asyncio.Future[None]:
        """Queue usage rows; the future completes once the store has applied them."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        usage.waiters.append(waiter)
        self._add_usage(self._group(usage.key[0]), usage)
        return waiter

    def depth(self) -> int:
        """Entries waiting for the store: queued admissions, usage entries, carried batches."""
        return sum(
            len(g.queue) + len(g.usages) + sum(len(c) for c in g.carries.values()) for g in self._groups.values()
        )

    async def drain(self, timeout: float) -> bool:
        """Wait until everything is acknowledged (at shutdown); False if it could not be."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(group.has_work() or group.sender is not None for group in self._groups.values()):
            if loop.time() >= deadline:
                return False
            senders = [g.sender for g in self._groups.values() if g.sender is not None]
            if senders:
                await asyncio.wait(senders, timeout=deadline - loop.time())
            for group in self._groups.values():
                if group.has_work():
                    self._kick(group)
            await asyncio.sleep(0)
        return True

    async def aclose(self) -> None:
        self._closed = True
        tasks = [g.sender for g in self._groups.values() if g.sender is not None]
        if self._spooler is not None:
            tasks.append(self._spooler)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.spool is not None:
            if self.depth():
                self._write_spool()
            else:
                self.spool.clear()
            self.spool.release()

    def snapshot(self) -> tuple[list[Usage], dict[str, list[Carry]]]:
        """Everything not yet acknowledged; a batch in flight counts as carried (it may have run)."""
        usages: list[Usage] = []
        carries: dict[str, list[Carry]] = {}
        for group in self._groups.values():
            usages.extend(group.usages.values())
            for customer, items in group.carries.items():
                carries.setdefault(customer, []).extend(items)
            for work in group.inflight or ():
                if work.admissions or work.usages:
                    carry = Carry(group.inflight_seq, work.admissions, work.usages)
                    carries.setdefault(work.customer, []).append(carry)
        return usages, carries

    def restore(self, usages: Iterable[Usage], carries: dict[str, list[Carry]]) -> None:
        """Take back what a spool kept; sent once the process runs (resume())."""
        for usage in usages:
            group = self._group(usage.key[0])
            group.usages.setdefault(usage.key, Usage(usage.key)).merge(usage)
        for customer, items in carries.items():
            self._group(customer).carries.setdefault(customer, []).extend(items)

    def resume(self) -> None:
        """Start sending whatever waits (restored from a spool), in the running loop."""
        for group in self._groups.values():
            if group.has_work():
                self._kick(group)

    def _write_spool(self) -> None:
        assert self.spool is not None
        usages, carries = self.snapshot()
        try:
            self.spool.write(Spooled(self.writer, self._seq, usages, carries))
        except OSError as exc:
            log.error("could not write the spool in %s: %s", self.spool.directory, exc)

    async def _spool_forever(self) -> None:
        """While the store fails, keep the ledger on disk; once it is all acknowledged, remove it."""
        assert self.spool is not None
        while True:
            await asyncio.sleep(SPOOL_SECONDS)
            if self._failing and self.depth():
                self._write_spool()
            elif self.spool.active and not self.depth():
                self.spool.clear()

    # internals ------------------------------------------------------------------------------------

    def _group(self, customer: str) -> _Group:
        slot = self._group_of(customer)
        group = self._groups.get(slot)
        if group is None:
            group = self._groups[slot] = _Group()
        return group

    def _add_usage(self, group: _Group, usage: Usage) -> None:
        existing = group.usages.get(usage.key)
        if existing is not None:
            existing.merge(usage)
        elif len(group.usages) < self.max_entries:
            group.usages[usage.key] = usage
        else:
            # No room for another entry: keep the count of requests served, not their breakdown.
            served = sum(calls for calls, _ in usage.rows.values())
            dropped = Usage(usage.key, unmetered=usage.unmetered + (1 if served > 0 else 0), uncounted=usage.uncounted,
                            waiters=usage.waiters)  # fmt: skip
            for other in group.usages.values():
                if other.key[:2] == usage.key[:2]:
                    other.merge(dropped)
                    break
            else:
                self.unmetered_dropped += dropped.unmetered
                for waiter in usage.waiters:
                    if not waiter.done():
                        waiter.set_result(None)
                log.error("ledger full: usage of %s could not be kept (unmetered)", usage.key[0])
        if self._closed:
            return
        self._kick(group)

    def _kick(self, group: _Group) -> None:
        if group.sender is None and not self._closed:
            group.sender = asyncio.ensure_future(self._send_loop(group))
            if self.spool is not None and self._spooler is None:
                self._spooler = asyncio.ensure_future(self._spool_forever())

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _compose(self, group: _Group, now: float) -> list[Work]:
        works: dict[str, Work] = {}

        def work(customer: str) -> Work:
            item = works.get(customer)
            if item is None:
                item = works[customer] = Work(customer)
            return item

        # Every carry goes in every batch: a batch that applies for a customer moves its record
        # past every earlier sequence, so it must resolve all that customer's carries at once.
        for customer, carries in group.carries.items():
            work(customer).carries.extend(carries)
        # Every queued admission goes: a request waits for the batch in flight and then its own,
        # never for a third round trip. (They are bounded by the requests in flight.) Usage rows
        # come after them, MAX_USAGES at a time: a fast-path flush of every customer at once must
        # not hold the admissions queued behind it for several round trips.
        while group.queue:
            pending = group.queue.popleft()
            if pending.future.done():
                continue  # the request went away before its decision was sent: nothing to decide
            if pending.give_up <= now:
                self._abandon(group, pending)
                continue
            item = work(pending.admission.request.customer)
            item.admissions.append(pending.admission)
            item.pending.append(pending)
        budget = MAX_USAGES
        while group.usages and budget > 0:
            key = next(iter(group.usages))
            usage = group.usages.pop(key)
            work(usage.key[0]).usages.append(usage)
            budget -= 1
        return list(works.values())

    def _abandon(self, group: _Group, pending: Pending) -> None:
        """An admission whose budget ran out before it was sent."""
        self._fail(group, pending, Expired("the store did not answer within the admission budget"))

    def _fail(self, group: _Group, pending: Pending, error: Exception) -> None:
        """An admission the store will not decide: fail its request; count its call if served anyway."""
        if not pending.future.done():
            pending.future.set_exception(error)
        if pending.admission.served:
            self._add_usage(group, served_usage(pending.admission.request))

    def _expire_queued(self, group: _Group, now: float) -> None:
        while group.queue and group.queue[0].give_up <= now:
            self._abandon(group, group.queue.popleft())

    def _on_timer(self, group: _Group) -> None:
        group.timer = None
        loop = asyncio.get_running_loop()
        self._expire_queued(group, loop.time())
        if group.queue:
            group.timer = loop.call_at(group.queue[0].give_up, self._on_timer, group)

    async def _send_loop(self, group: _Group) -> None:
        loop = asyncio.get_running_loop()
        try:
            while group.has_work() and not self._closed:
                works = self._compose(group, loop.time())
                if not works:
                    continue
                await self._send(group, works, loop)
        finally:
            group.sender = None
            if group.has_work() and not self._closed:
                self._kick(group)

    async def _send(self, group: _Group, works: list[Work], loop: asyncio.AbstractEventLoop) -> None:
        seq = self._next_seq()
        give_ups = [p.give_up for w in works for p in w.pending]
        give_up = min(give_ups) if give_ups else math.inf
        deadline_ms = 0 if give_up == math.inf else int((give_up + self._offset) * 1000)
        group.inflight, group.inflight_seq = works, seq
        if self.spool is not None and self.spool.active:
            self._write_spool()  # the file names every batch that may reach the store
        # The sender awaits the store itself, under the batch's deadline: a task per attempt
        # watched through asyncio.wait put three more turns of the event loop between a reply and
        # the requests it answers (and the next batch), each one latency for every request under
        # load (mg-exact: ~10% of its throughput). Queued admissions end at their budget by the
        # group's timer (admit()), whatever the batch in flight waits for.
        try:
            async with asyncio.timeout_at(give_up if give_up != math.inf else None) as budget:
                sec, usec, replies = await self._attempts(seq, deadline_ms, works)
        except TimeoutError:
            if not budget.expired():
                raise  # not the deadline's
            self._gave_up(group, seq, works)
            return
        except asyncio.CancelledError:
            self._gave_up(group, seq, works)
            raise
        finally:
            group.inflight = None
        self._offset = sec + usec / 1_000_000 - loop.time()
        for work, reply in zip(works, replies, strict=True):
            self._settled(group, work, reply)

    async def _attempts(self, seq: int, deadline_ms: int, works: list[Work]) -> tuple[int, int, list[Reply]]:
        """Send the batch until the store answers; the same batch every time."""
        delay = RETRY_FIRST_SECONDS
        failures = 0
        while True:
            try:
                result = await self._run(seq, deadline_ms, works)
                self._failing = False
                return result
            except StoreError as exc:
                self._failing = True
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("store write failed (batch %s:%d, attempt %d); retrying: %s",
                                self.writer, seq, failures, exc)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _gave_up(self, group: _Group, seq: int, works: list[Work]) -> None:
        for work in works:
            for pending in work.pending:
                if not pending.future.done():
                    pending.future.set_exception(Expired("the store did not answer within the admission budget"))
            if work.admissions or work.usages:
                carry = Carry(seq, work.admissions, work.usages)
                group.carries.setdefault(work.customer, []).append(carry)
            # Carries this batch carried stay where they are (still in group.carries).

    def _settled(self, group: _Group, work: Work, reply: Reply) -> None:
        if reply.status == "stale":
            # Cannot happen with unique writer ids; never applied, so its usage goes again as new.
            log.error("store reported batch of writer %s as stale for %s", self.writer, work.customer)
            for pending in work.pending:
                self._fail(group, pending, StoreError("the store reported this write as stale"))
            for usage in work.usages:
                self._add_usage(group, usage)
            return
        if work.carries:
            resolved = {id(carry) for carry in work.carries}
            remaining = [c for c in group.carries.get(work.customer, []) if id(c) not in resolved]
            if remaining:
                group.carries[work.customer] = remaining
            else:
                group.carries.pop(work.customer, None)
        for usage in [*work.usages, *(u for carry in work.carries for u in carry.usages)]:
            for waiter in usage.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        now = reply.sec + reply.usec / 1_000_000
        for pending, result in zip(work.pending, reply.admissions, strict=True):
            if isinstance(result, list) and len(result) > 1:
                if not pending.future.done():
                    pending.future.set_result((result, now))
                continue
            # Expired in the store: void. Counted once if the caller serves it anyway.
            self._fail(group, pending, Expired("the store ran the admission after its deadline"))


__all__ = ["Admission", "Carry", "Expired", "Ledger", "Reply", "Usage", "Work", "served_usage"]
