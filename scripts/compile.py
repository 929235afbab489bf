"""Compile meterguard's request-path modules with mypyc: an optional build (``make compile``).

``python scripts/compile.py [--into DIR]`` copies ``src/`` to a scratch directory, runs mypyc on
the modules of ``COMPILED`` there, and puts the extension modules it built next to their sources
(in ``src/`` or, with ``--into``, in a copy of ``src/`` at DIR: what ``MG_BENCH_COMPILED``
serves). Python imports an extension module before a ``.py`` of the same name, so the sources
stay where they are and ``python scripts/compile.py --clean`` (``make uncompile``) undoes it.

Why these modules: they run on every request (the memory, fast and exact paths), and none of
their classes is subclassed by code left interpreted (mypyc refuses that) except MemoryStore,
which says it allows it. Kept interpreted, with the reason:

- middleware.py: compiled, its ``try/finally`` around the app re-raised a client disconnect's
  CancelledError in later requests (tests/test_disconnects.py, then tests/test_records.py fail);
- store/_redis_meter.py: RedisStore, interpreted, inherits from it; store/_ledger.py, store/_resp.py
  and store/_redis_client.py: the waits, timeouts and sockets, where cancellation is the job;
- store/base.py: compiled, its ``runtime_checkable`` Protocols fail at import (TypeError);
- plans.py, windows.py, periods.py, idempotency.py: compiled, they took 3.7k instructions more
  off a memory-path request (under 1%): not worth four more modules held to mypyc's rules;
- the admin API, CLI and config: not per request.

Needs a C compiler and Python's headers (Debian: gcc, python3-dev for the system Python).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
EXTENSION = sysconfig.get_config_var("EXT_SUFFIX")  # .cpython-311-x86_64-linux-gnu.so
SOURCES_ONLY = shutil.ignore_patterns("__pycache__", f"*{EXTENSION}")

COMPILED = (
    "meterguard/_responder.py",
    "meterguard/auth.py",
    "meterguard/meter.py",
    "meterguard/responses.py",
    "meterguard/logs.py",
    "meterguard/metrics.py",
    "meterguard/lease.py",
    "meterguard/_lease_usage.py",
    "meterguard/store/memory.py",
    "meterguard/store/_memory_events.py",
    "meterguard/store/_memory_tallies.py",
    "meterguard/store/_redis_meter_wire.py",
    "meterguard/store/_ledger_entries.py",
)


def built(root: Path) -> list[Path]:
    """The extension modules under ``root``: meterguard's, and mypyc's shared one beside it."""
    return sorted([*root.glob(f"meterguard/**/*{EXTENSION}"), *root.glob(f"*__mypyc{EXTENSION}")])


def clean(root: Path) -> list[Path]:
    found = built(root)
    for path in found:
        path.unlink()
    return found


def compile_into(target: Path) -> list[Path]:
    """Build ``COMPILED`` from ``src/`` and put the extension modules under ``target``."""
    if shutil.which(sysconfig.get_config_var("CC").split()[0]) is None:
        raise SystemExit(f"no C compiler ({sysconfig.get_config_var('CC')}): mypyc needs one (Debian: apt install gcc)")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        raise SystemExit(f"no {include}: mypyc needs Python's headers (Debian: apt install python3-dev)")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "src"
        shutil.copytree(SRC, work, ignore=SOURCES_ONLY)
        result = subprocess.run([sys.executable, "-m", "mypyc", *COMPILED], cwd=work, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"mypyc failed:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")
        clean(target)
        placed = []
        for path in built(work):
            destination = target / path.relative_to(work)
            shutil.copy2(path, destination)
            placed.append(destination)
    return placed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/compile.py", description=__doc__.splitlines()[0])
    parser.add_argument("--into", type=Path, help="a copy of src/ to build, made there (default: src/ itself)")
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules instead")
    args = parser.parse_args(argv)
    target = SRC
    if args.into is not None:
        target = args.into
        if not args.clean:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(SRC, target, ignore=SOURCES_ONLY)
    if args.clean:
        removed = clean(target)
        print(f"removed {len(removed)} compiled modules from {target}")
        return 0
    placed = compile_into(target)
    print(f"compiled {len(COMPILED)} modules into {target} ({len(placed)} extension files)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
