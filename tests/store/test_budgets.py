"""Budgets (store/_budgets.py): every watched wait ends at its own budget's end, on one timer.

Timed against the event loop's own clock with generous upper bounds: what may not happen is a
wait ending before its budget (a timer armed for an earlier wait ending a later one) or never
(a timer not re-armed for the waits behind the first).
"""

from __future__ import annotations

import asyncio

from meterguard.store._budgets import EARLY_SECONDS, Budgets

BUDGET = 0.2


async def ended_after(future: asyncio.Future[None], started: float) -> float:
    await asyncio.wait_for(future, 5.0)  # never: fails, not hangs
    return asyncio.get_running_loop().time() - started


async def test_each_wait_ends_at_its_own_budget_not_at_the_first_one_s() -> None:
    loop = asyncio.get_running_loop()
    budgets = Budgets(BUDGET)
    first, second = loop.create_future(), loop.create_future()
    first_started = loop.time()
    budgets.watch(first)
    await asyncio.sleep(0.1)
    second_started = loop.time()
    budgets.watch(second)
    waited = await asyncio.gather(ended_after(first, first_started), ended_after(second, second_started))
    for seconds in waited:
        assert BUDGET - EARLY_SECONDS <= seconds < BUDGET + 0.15, waited
    assert first.result() is None and second.result() is None


async def test_a_wait_that_ended_on_its_own_is_left_alone_and_those_behind_it_still_end() -> None:
    loop = asyncio.get_running_loop()
    budgets = Budgets(BUDGET)
    done_early, cancelled, pending = loop.create_future(), loop.create_future(), loop.create_future()
    started = loop.time()
    for future in (done_early, cancelled, pending):
        budgets.watch(future)
    done_early.set_result(None)
    cancelled.cancel()
    assert BUDGET - EARLY_SECONDS <= await ended_after(pending, started) < BUDGET + 0.15
    assert cancelled.cancelled()
    assert len(budgets) == 0  # the timer took every wait out of the queue


async def test_waits_that_keep_coming_are_each_ended_once_their_budget_is_over() -> None:
    """Steady traffic: the timer moves on from wait to wait, never stops while any is pending."""
    loop = asyncio.get_running_loop()
    budgets = Budgets(0.05)
    futures: list[tuple[float, asyncio.Future[None]]] = []
    for _ in range(20):
        future = loop.create_future()
        futures.append((loop.time(), future))
        budgets.watch(future)
        await asyncio.sleep(0.01)
    for started, future in futures:
        waited = await ended_after(future, started)
        assert waited >= 0.05 - EARLY_SECONDS
    last_started = futures[-1][0]
    assert loop.time() - last_started < 0.3


async def test_a_new_event_loop_starts_with_an_empty_queue() -> None:
    budgets = Budgets(BUDGET)

    async def one() -> float:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        started = loop.time()
        budgets.watch(future)
        return await ended_after(future, started)

    in_another_loop = asyncio.get_running_loop().run_in_executor(None, asyncio.run, one())
    assert await in_another_loop >= BUDGET - EARLY_SECONDS
    assert await one() >= BUDGET - EARLY_SECONDS
