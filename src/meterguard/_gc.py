"""The garbage collector's settings for a serving gateway process, set once at startup.

Why: a request that waits on Redis (exact mode: twice) keeps its objects alive across the
round trip: the server's scope and headers, the app's coroutines, the ledger's futures. With 32
requests in flight that is over a thousand container objects alive at any moment, more than
CPython's young-generation threshold of 700, so a young collection ran every few requests,
each moving the survivors toward the old generation, whose full collections then walked every
object the process holds (~70k after startup, on the order of 50 ms each on a busy host).
Measured in the in-process loop (docs/benchmarks.md): 26 µs of a 200 µs exact-mode request in
the collector; none on the memory path, whose requests never wait.

The tuning: objects alive once the app has started (modules, the app, the config) are moved to
the permanent generation (``gc.freeze()``), which full collections skip; and the young
threshold is raised to :data:`YOUNG_THRESHOLD`, above what the requests in flight hold, so
collections follow real garbage rather than in-flight work. Cyclic garbage still gets
collected, only in larger steps (a few MB at most).

Only a threshold still at CPython's default is raised: an application that set its own keeps
it. ``MG_GC_TUNING=off`` leaves the collector as it is.
"""

from __future__ import annotations

import gc
import logging
import os

from .errors import ConfigError, ConfigIssue

log = logging.getLogger("meterguard")

GC_TUNING_ENV = "MG_GC_TUNING"
YOUNG_THRESHOLD = 10_000
CPYTHON_YOUNG_THRESHOLD = 700  # gc's default since Python 2; anything else was someone's choice

_done = False


def gc_tuning_wanted() -> bool:
    """``MG_GC_TUNING``: ``on`` (the default) or ``off``; ConfigError for anything else."""
    value = os.environ.get(GC_TUNING_ENV, "on").strip().lower()
    if value in ("on", "1", "true", "yes", ""):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise ConfigError([ConfigIssue("<environment>", None, GC_TUNING_ENV, f"{value!r}: expected on or off")])


def tune_for_serving() -> None:
    """Freeze what startup left and raise the young threshold; once per process (see module doc)."""
    global _done
    if _done:
        return
    _done = True
    if gc.isenabled():  # an application that turned the collector off made its call
        apply_serving_settings()


def apply_serving_settings() -> None:
    """The settings themselves, each time it is called (benchmarks.gc_policy switches them)."""
    young, older, oldest = gc.get_threshold()
    raised = young == CPYTHON_YOUNG_THRESHOLD
    if raised:
        gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
    gc.collect()  # what startup left as garbage is freed, not frozen
    gc.freeze()
    log.info(
        "garbage collector: %d objects of startup frozen, young threshold %d%s (%s=off to leave it)",
        gc.get_freeze_count(),
        gc.get_threshold()[0],
        f" (was {young})" if raised else "",
        GC_TUNING_ENV,
    )
