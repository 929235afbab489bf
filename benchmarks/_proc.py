"""CPU time of a process tree, from /proc: what a server costs, whatever processes it forks.

A server is the process the harness started and every descendant (``meterguard serve
--workers N`` forks workers, uvicorn's reloader forks, an app may run helpers). For each live
process of the tree, ``utime + stime`` is its own CPU and ``cutime + cstime`` that of the
descendants it has already reaped, so the sum over the live tree counts every process that
ever ran in it (a descendant orphaned to init is lost, which servers don't do).
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int]:
    """(parent pid, CPU ticks of the process and its reaped descendants) from /proc/PID/stat."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return int(fields[1]), utime + stime + cutime + cstime


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` alone (its threads included, its children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU of ``root`` and all its descendants, live or reaped, since they started."""
    processes: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                processes[int(entry.name)] = _stat(int(entry.name))
            except (OSError, IndexError, ValueError):  # exited while we read /proc
                continue
    if root not in processes:
        raise ProcessLookupError(f"no process {root}")
    children: dict[int, list[int]] = {}
    for pid, (parent, _ticks) in processes.items():
        children.setdefault(parent, []).append(pid)
    ticks = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        ticks += processes[pid][1]
        pending.extend(children.get(pid, ()))
    return ticks / CLOCK_TICKS
