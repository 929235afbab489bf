"""What the ``mg-serve`` arm hands ``meterguard serve``: the benchmark app, unwrapped (the command wraps it).

Imported by ``meterguard serve benchmarks.serve_target:app`` in the server process, in its main
thread, before uvicorn starts. Like ``python -m benchmarks serve`` for the other arms, it counts
the Redis commands the process sends (benchmarks/_count.py) and writes the count to
``MG_BENCH_COUNT_FILE`` on SIGUSR1, which is how the driver reads it (benchmarks/http.py).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from . import _count
from .arms import make_app

COUNT_FILE_ENV = "MG_BENCH_COUNT_FILE"

_count.install()
_reported = [0]


def _report(signum: int, frame: Any) -> None:
    # {"sequence": n, "sent": {command: count so far}}, written atomically, as http.serve does
    path = Path(os.environ[COUNT_FILE_ENV])
    _reported[0] += 1
    Path(f"{path}.tmp").write_text(json.dumps({"sequence": _reported[0], "sent": _count.sent()}))
    os.replace(f"{path}.tmp", path)


if os.environ.get(COUNT_FILE_ENV):
    # signal.signal, not the loop's handler: uvicorn creates its loop later, and handles only INT and TERM.
    signal.signal(signal.SIGUSR1, _report)

app = make_app()
