"""Rate window arithmetic: the sliding-window counter (default) and the fixed window.

The sliding-window counter (Cloudflare's, limits' "moving window approximation") keeps two
counters per window, the current and the previous fixed slot, and weighs the previous one by
how much of it still overlaps the sliding window. It is O(1) in memory, smooths the burst a
fixed window allows at its edges, and in its first slot is exact. The Lua scripts implement
the same formulas; this module is the reference and the memory store's implementation.
"""

from __future__ import annotations

import math


def estimate(previous: int, current: int, elapsed: float, seconds: int, sliding: bool) -> float:
    """Units counted in the window ending now."""
    if not sliding:
        return float(current)
    return previous * (seconds - elapsed) / seconds + current


def remaining(limit: int, used: float) -> int:
    return max(0, math.floor(limit - used + 1e-9))


def wait(previous: int, current: int, elapsed: float, seconds: int, limit: int, weight: int, sliding: bool) -> float:
    """Seconds until a request of ``weight`` units would fit (assuming nothing else is admitted)."""
    to_next_slot = seconds - elapsed
    if weight > limit:
        return float(seconds)  # never fits; say "a window from now" rather than forever
    if not sliding:
        return to_next_slot
    if current + weight <= limit and previous > 0:
        # The previous slot's weight decays linearly; solve for the moment it leaves room.
        needed_elapsed = seconds - (limit - weight - current) * seconds / previous
        return max(needed_elapsed - elapsed, 0.001)
    # Wait for the next slot, where this slot's count becomes the decaying "previous".
    needed_elapsed = seconds * (1 - (limit - weight) / current) if current > 0 else 0.0
    return to_next_slot + max(needed_elapsed, 0.0)


def reset_after(
    previous: int, current: int, elapsed: float, seconds: int, limit: int, sliding: bool, weight: int = 1
) -> float:
    """The ``t`` of the RateLimit header: when the window next has room for a request of ``weight``
    units if it has not, else its slot end.

    With a full sliding window the slot end would lie to the client (the previous slot still
    weighs), so a client that waits ``t`` seconds is then admitted. On a weighted route "room"
    means room for the route's weight: a weight-3 request with 2 units left waits as long as
    its ``Retry-After`` says, not until the slot ends (docs/http.md, "Weighted routes").
    """
    if estimate(previous, current, elapsed, seconds, sliding) + weight > limit:
        return wait(previous, current, elapsed, seconds, limit, weight, sliding)
    return seconds - elapsed
