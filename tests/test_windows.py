"""Sliding-window counter and fixed window: estimate, remaining, and the wait until a request fits."""

from __future__ import annotations

import math
import random

import pytest

from meterguard.windows import estimate, remaining, wait


def fits(previous: int, current: int, elapsed: float, seconds: int, limit: int, weight: int, sliding: bool) -> bool:
    # The admission rule of the stores: refused when ``used + weight > limit``. A hair of tolerance
    # absorbs float rounding in the wait formula at the exact boundary.
    return estimate(previous, current, elapsed, seconds, sliding) + weight <= limit + 1e-9


def advance(previous: int, current: int, elapsed: float, seconds: int, dt: float) -> tuple[int, int, float]:
    """The window state ``dt`` seconds later with nothing admitted meanwhile (slots roll at multiples)."""
    moment = elapsed + dt
    rolls = math.floor(moment / seconds)
    if rolls == 0:
        return previous, current, moment
    if rolls == 1:
        return current, 0, moment - seconds  # this slot becomes the decaying "previous"
    return 0, 0, moment - rolls * seconds


# -- estimate ---------------------------------------------------------------------------------------


def test_sliding_estimate_weighs_previous_by_overlap() -> None:
    assert estimate(10, 4, 15, 60, True) == pytest.approx(10 * 45 / 60 + 4)  # 11.5
    assert estimate(10, 4, 15, 60, True) == pytest.approx(11.5)
    assert estimate(10, 4, 0, 60, True) == pytest.approx(14.0)  # slot start: all of previous counts
    assert estimate(10, 4, 30, 60, True) == pytest.approx(9.0)  # half-way: half of it
    assert estimate(10, 4, 59.999, 60, True) == pytest.approx(4.0, abs=1e-3)  # almost none left
    assert estimate(0, 7, 12.5, 60, True) == pytest.approx(7.0)  # first slot is exact


def test_previous_slot_decays_linearly() -> None:
    values = [estimate(60, 0, e, 60, True) for e in range(0, 60, 6)]
    assert values == pytest.approx([60 - e for e in range(0, 60, 6)])
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_fixed_estimate_ignores_previous() -> None:
    assert estimate(100, 4, 15, 60, False) == 4.0
    assert estimate(100, 0, 0, 60, False) == 0.0
    assert isinstance(estimate(1, 2, 3, 60, False), float)


# -- remaining --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "used", "expected"),
    [
        (10, 0, 10),
        (10, 3.0, 7),
        (10, 3.5, 6),  # fractional use rounds remaining down
        (10, 9.99, 0),
        (10, 10, 0),
        (10, 11.5, 0),  # never negative
        (20, 11.5, 8),
        (10, 3.0000000001, 7),  # float noise just above a whole number does not cost a unit
        (10, 2.9999999999, 7),
    ],
)
def test_remaining(limit: int, used: float, expected: int) -> None:
    assert remaining(limit, used) == expected


# -- wait: worked examples --------------------------------------------------------------------------


def test_wait_weight_above_limit_is_one_window() -> None:
    assert wait(0, 0, 10, 60, 5, 6, True) == 60.0
    assert wait(3, 2, 10, 60, 5, 6, False) == 60.0
    assert wait(0, 0, 0.5, 1, 1, 2, True) == 1.0


def test_wait_fixed_is_time_to_next_slot() -> None:
    assert wait(0, 10, 15, 60, 10, 1, False) == pytest.approx(45.0)
    assert wait(99, 8, 59.5, 60, 10, 3, False) == pytest.approx(0.5)


def test_wait_sliding_for_previous_slot_to_decay() -> None:
    # 10 previous, 4 current at 15 s of 60, limit 10: at 30 s the estimate is 5 + 4 = 9, room for 1.
    assert wait(10, 4, 15, 60, 10, 1, True) == pytest.approx(15.0)
    # weight 3 needs the estimate down to 7: previous weight 3 -> 18 s left -> elapsed 42
    assert wait(10, 4, 15, 60, 10, 3, True) == pytest.approx(27.0)


def test_wait_sliding_current_slot_full_waits_past_the_roll() -> None:
    # current (10) + 1 > limit: wait for the slot to roll, then for the old current to decay to 9.
    assert wait(5, 10, 20, 60, 10, 1, True) == pytest.approx(40 + 6)
    assert wait(0, 10, 20, 60, 10, 1, True) == pytest.approx(40 + 6)
    # weight 5 needs the carried 10 to decay to 5: half the next slot
    assert wait(0, 10, 20, 60, 10, 5, True) == pytest.approx(40 + 30)


def test_wait_is_at_least_a_millisecond_when_decay_has_just_made_room() -> None:
    assert wait(10, 0, 59.9999, 60, 10, 1, True) == pytest.approx(0.001)


# -- wait: property check ---------------------------------------------------------------------------


def _random_refused_state(rng: random.Random, sliding: bool) -> tuple[int, int, float, int, int, int]:
    while True:
        seconds = rng.choice([1, 2, 60, 90, 900, 3600, 86400])
        limit = rng.randint(1, 60)
        weight = rng.randint(1, limit)
        previous = rng.randint(0, limit)
        current = rng.randint(0, limit)
        if rng.random() < 0.2:
            current = rng.randint(max(0, limit - weight + 1), limit)  # slot already full for this weight
        if rng.random() < 0.1:
            previous = 0
        elapsed = rng.uniform(0, seconds) if rng.random() < 0.9 else rng.choice([0.0, seconds / 2])
        if elapsed >= seconds:
            continue
        if not fits(previous, current, elapsed, seconds, limit, weight, sliding):
            return previous, current, elapsed, seconds, limit, weight


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "fixed"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_after_waiting_the_request_fits_and_not_before(seed: int, sliding: bool) -> None:
    rng = random.Random(seed)
    rolled = stayed = 0
    for _ in range(3000):
        previous, current, elapsed, seconds, limit, weight = _random_refused_state(rng, sliding)
        delay = wait(previous, current, elapsed, seconds, limit, weight, sliding)
        assert 0 < delay <= 2 * seconds
        state = (previous, current, elapsed, seconds, limit, weight)

        # (1 ns past the delay, so a one-ulp rounding at the exact boundary is not a failure)
        later = advance(previous, current, elapsed, seconds, delay + 1e-9)
        assert fits(*later, seconds, limit, weight, sliding), (state, delay, later)
        if later[2] < elapsed + delay:
            rolled += 1
        else:
            stayed += 1

        # nothing admitted meanwhile: the estimate only falls, so any later moment fits too
        extra = rng.uniform(0, 2 * seconds)
        much_later = advance(previous, current, elapsed, seconds, delay + extra)
        assert fits(*much_later, seconds, limit, weight, sliding), (state, delay, extra)

        # slightly before, it does not fit yet (unless the delay is the 1 ms floor)
        margin = 1e-6 * seconds
        if delay > 0.001 + 2 * margin:
            earlier = advance(previous, current, elapsed, seconds, delay - margin)
            assert not fits(*earlier, seconds, limit, weight, sliding), (state, delay, earlier)
    # both branches of the simulation were exercised
    assert rolled > 100
    if sliding:
        assert stayed > 100


@pytest.mark.parametrize("sliding", [True, False], ids=["sliding", "fixed"])
def test_weight_above_limit_never_fits(sliding: bool) -> None:
    rng = random.Random(7)
    for _ in range(200):
        seconds = rng.choice([1, 60, 900])
        limit = rng.randint(1, 20)
        weight = limit + rng.randint(1, 5)
        previous, current = rng.randint(0, limit), rng.randint(0, limit)
        elapsed = rng.uniform(0, seconds)
        assert wait(previous, current, elapsed, seconds, limit, weight, sliding) == float(seconds)
        for dt in (0.0, seconds / 3, float(seconds), 5.0 * seconds):
            assert not fits(*advance(previous, current, elapsed, seconds, dt), seconds, limit, weight, sliding)
