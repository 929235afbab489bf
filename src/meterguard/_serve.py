"""How ``meterguard serve`` runs uvicorn: as ``uvicorn`` itself does, for one worker and for many.

One worker: :func:`serve_one` hands the MeterGuard object to ``uvicorn.Server.run``, which sets
up uvicorn's own loop and protocol (uvloop and httptools where installed, as ``uvicorn.run``;
CONTRACT section 11). ``asyncio.run(server.serve())`` would skip that and run the stdlib loop.

Several workers: uvicorn starts N workers by importing an app by name, so the wrapped app cannot
be passed as an object; the CLI puts the target, the plans file and the store URL in the
environment and each worker builds its own MeterGuard (and its own store connections) in
:func:`create_app`.

Logging (both): :func:`log_config` is uvicorn's own logging config plus the ``meterguard``
loggers, so that ``--log-format json`` makes every line of every process one JSON object.
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, cast

from ._types import ASGIApp

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TARGET_ENV = "MG_SERVE_TARGET"
CONFIG_ENV = "MG_CONFIG"
STORE_ENV = "MG_STORE"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's --log-level choices
LOG_FORMATS = ("text", "json")


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


def log_config(log_format: str, log_level: str) -> dict[str, Any]:
    """uvicorn's ``LOGGING_CONFIG`` with the ``meterguard`` loggers added (logs.py's formatters).

    ``text`` keeps uvicorn's own lines as uvicorn writes them; ``json`` sends uvicorn's loggers
    (server and access) through meterguard's JSON formatter too, so that a log shipper can parse
    every line. Given to ``uvicorn.Config(log_config=...)``, it is applied in the master and
    again in each worker process (uvicorn reconfigures logging in every child).
    """
    from uvicorn.config import LOG_LEVELS as UVICORN_LEVELS
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    formatter = "meterguard.logs.JsonFormatter" if log_format == "json" else "meterguard.logs.TextFormatter"
    config.setdefault("filters", {})["meterguard_context"] = {"()": "meterguard.logs.ContextFilter"}
    config["formatters"]["meterguard"] = {"()": formatter}
    # The name "meterguard" is logs.py's: MeterGuard's configure_from_env() then leaves it alone.
    config["handlers"]["meterguard"] = {
        "class": "logging.StreamHandler",
        "formatter": "meterguard",
        "filters": ["meterguard_context"],
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["meterguard"] = {
        "handlers": ["meterguard"],
        "level": UVICORN_LEVELS[log_level],
        "propagate": False,
    }
    if log_format == "json":
        for name in ("uvicorn", "uvicorn.access"):
            config["loggers"][name]["handlers"] = ["meterguard"]
    return config


def uvicorn_options(
    *,
    host: str,
    port: int,
    log_level: str,
    log_format: str,
    access_log: bool,
    proxy_headers: bool,
    forwarded_allow_ips: str | None,
    root_path: str,
) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.Config`` that ``meterguard serve`` passes, for 1 or N workers."""
    return {
        "host": host,
        "port": port,
        "loop": "auto",  # uvloop where installed (uvicorn[standard] is a dependency)
        "http": "auto",  # httptools where installed
        "lifespan": "auto",
        "log_level": log_level,
        "log_config": log_config(log_format, log_level),
        # uvicorn writes a line per request unless told not to: a cost on every request, for
        # lines that say less than the gateway's own metrics (customer, plan, outcome).
        "access_log": access_log,
        "proxy_headers": proxy_headers,
        "forwarded_allow_ips": forwarded_allow_ips,  # None: uvicorn's default (FORWARDED_ALLOW_IPS, else local)
        "root_path": root_path,
    }


def serve_one(guard: Any, options: dict[str, Any], before: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve ``guard`` (a MeterGuard) in this process as ``uvicorn.run`` would, then close it.

    ``before`` runs in the server's loop before it starts (the demo creates its customers there).
    The guard is closed at the end of uvicorn's shutdown, inside uvicorn's signal handling: after
    a SIGTERM, uvicorn re-raises the signal once it has stopped, which ends the process at once,
    so closing after ``run()`` returns would never flush what the gateway still holds.
    """
    import uvicorn

    class Server(uvicorn.Server):
        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            if before is not None:
                await before()
            await super().serve(sockets=sockets)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().shutdown(sockets=sockets)
            finally:
                # Also closed by the lifespan shutdown when the app speaks lifespan; closing twice is fine.
                await guard.aclose()

    Server(uvicorn.Config(guard, **options)).run()
