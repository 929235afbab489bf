"""What ``meterguard serve --workers N`` hands uvicorn: an import string for every worker process.

uvicorn starts N workers by importing an app by name, so the wrapped app cannot be passed as
an object; the CLI puts the target, the plans file and the store URL in the environment and
each worker builds its own MeterGuard (and its own store connections) here.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Any, cast

from ._types import ASGIApp

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TARGET_ENV = "MG_SERVE_TARGET"
CONFIG_ENV = "MG_CONFIG"
STORE_ENV = "MG_STORE"


def import_target(target: str) -> ASGIApp:
    """``module:attribute`` (attribute may be dotted) -> the object; ImportError with a reason."""
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ImportError(f"{target!r} is not MODULE:APP (e.g. myservice.main:app)")
    # As uvicorn's --app-dir default: the current directory is importable.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not callable(obj):
        raise ImportError(f"{target} is not an ASGI application")
    return cast(ASGIApp, obj)


def create_app() -> ASGIApp:
    """uvicorn factory (``meterguard._serve:create_app``, factory=True)."""
    from .middleware import MeterGuard

    return MeterGuard(
        import_target(os.environ[TARGET_ENV]),
        config=os.environ[CONFIG_ENV],
        store=os.environ.get(STORE_ENV) or None,
    )


def run_workers(app: str, *, workers: int, **options: Any) -> None:
    """``uvicorn.run(app, workers=N, factory=True, ...)``, with two things an operator of meterguard needs.

    - SIGHUP to this (master) process is forwarded to every worker, and each rereads plans.yaml in
      place (MeterGuard.reload); uvicorn's own supervisor would restart every worker instead.
    - Metrics of every worker add up at ``/metrics``: PROMETHEUS_MULTIPROC_DIR is set to a fresh
      directory for this run unless the operator set one (then it is theirs to empty at start).
    """
    import uvicorn
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Workers(Multiprocess):
        def handle_hup(self) -> None:
            logging.getLogger("meterguard").info("SIGHUP: telling %d workers to reload plans.yaml", len(self.processes))
            for process in self.processes:
                if process.pid is not None and process.process.is_alive():
                    os.kill(process.pid, signal.SIGHUP)

    own_dir = None
    if not os.environ.get(MULTIPROC_ENV):
        own_dir = tempfile.mkdtemp(prefix="meterguard-metrics-")
        os.environ[MULTIPROC_ENV] = own_dir
    try:
        config = uvicorn.Config(app, factory=True, workers=workers, **options)
        Workers(config, sockets=[config.bind_socket()]).run()
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
