"""The ``meterguard`` command (CONTRACT section 9).

Errors a user can cause (a bad plans file, an unknown customer, a store that does not answer)
are one line each on stderr and exit 1, never a traceback; usage errors exit 2, as click does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click

from ._cli_demo_banner import demo_banner
from ._serve import (
    CONFIG_ENV,
    LOG_FORMATS,
    LOG_LEVELS,
    STORE_ENV,
    TARGET_ENV,
    import_target,
    run_workers,
    serve_one,
    uvicorn_options,
)
from .config import Config, load_config
from .customers import Directory
from .errors import (
    ConfigError,
    CustomerExists,
    CustomerNotFound,
    KeyNotFound,
    MeterGuardError,
    PlanNotFound,
    StoreError,
)
from .logs import LOG_FORMAT_ENV, JsonFormatter
from .plans import RouteTable
from .store import store_from_url
from .store.base import Store

T = TypeVar("T")

MEMORY_WARNING = "warning: memory:// keeps state inside this one process; it is gone when the command exits"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"meterguard: {message}", err=True)
    sys.exit(code)


def redact(url: str) -> str:
    """A store URL safe to print: the password is replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


@contextmanager
def _errors() -> Iterator[None]:
    """Turn the errors a user can cause into one clear line each and exit 1."""
    try:
        yield
    except ConfigError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        sys.exit(1)
    except CustomerNotFound as exc:
        _fail(f"no customer {str(exc)!r}")
    except CustomerExists as exc:
        _fail(f"customer {str(exc)!r} already exists")
    except KeyNotFound as exc:
        _fail(f"no key {str(exc)!r}" if " " not in str(exc) else str(exc))
    except PlanNotFound as exc:
        _fail(f"no plan {str(exc)!r} in the plans file" if " " not in str(exc) else str(exc))
    except StoreError as exc:
        _fail(f"the store is unreachable or failed: {exc}")
    except MeterGuardError as exc:
        _fail(str(exc))


@contextmanager
def _interruptible() -> Iterator[None]:
    # uvicorn re-raises the Ctrl+C it handled once it has shut down: that is a normal stop.
    try:
        yield
    except KeyboardInterrupt:
        pass


def resolve_store(explicit: str | None, config: Config) -> str:
    # --store and MG_STORE arrive together through click's envvar; then the file; then memory.
    return explicit or config.store or "memory://"


#: The config of a read-only command run without a plans file: no plans, no static customers.
STORE_ONLY = Config(plans={}, routes=RouteTable(()), source="(no plans file)")


class State:
    """The config and store of a state command, opened lazily and closed by :meth:`run`.

    ``config_path`` None (read-only commands only): the store alone, with no plans file, so
    customers written only in plans.yaml are not seen; the store must then be named.
    """

    def __init__(self, config_path: str | None, store_url: str | None) -> None:
        if config_path is None:
            if not store_url:
                raise click.UsageError("give --store URL (or MG_STORE), or --config FILE (or MG_CONFIG)")
            self.config = STORE_ONLY
        else:
            self.config = load_config(config_path)
        self.url = resolve_store(store_url, self.config)
        if urlsplit(self.url).scheme == "memory":
            click.echo(MEMORY_WARNING, err=True)
        self.store: Store = _open_store(self.url)
        # The file's event-stream bounds: an export acknowledges, and trims what every group has
        # exported after events.keep_exported_seconds. Never the spool: that is a gateway's.
        self.store.configure_ledger(replace(self.config.ledger, spool_path=None))
        self.directory = Directory(self.config, self.store)

    @property
    def has_plans(self) -> bool:
        return self.config is not STORE_ONLY

    def run(self, work: Callable[[State], Awaitable[T]]) -> T:
        async def main() -> T:
            try:
                return await work(self)
            finally:
                await self.store.aclose()

        try:
            return asyncio.run(main())
        except StoreError as exc:
            raise StoreError(f"{redact(self.url)}: {exc}") from exc


def _open_store(url: str) -> Store:
    # A seam for tests: they share one memory store between invocations.
    return store_from_url(url)


def _with_state_options(command: Callable[..., Any], read_only: bool) -> Callable[..., Any]:
    command = click.option(
        "--store",
        "store_url",
        envvar=STORE_ENV,
        metavar="URL",
        help="Store URL (env MG_STORE); defaults to the file's store:, then memory://.",
    )(command)
    return click.option(
        "--config",
        "config_path",
        envvar=CONFIG_ENV,
        required=not read_only,
        metavar="FILE",
        help="The plans file (env MG_CONFIG)"
        + ("; optional here: without it, the store's customers only (give --store)." if read_only else "."),
    )(command)


def _state_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config`` (required) and ``--store``."""
    return _with_state_options(command, read_only=False)


def _read_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--config`` and ``--store`` of a read-only command: the store alone will do."""
    return _with_state_options(command, read_only=True)


def _json(document: object) -> None:
    click.echo(json.dumps(document, indent=2))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str("-" if cell is None else cell) for cell in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meterguard")
def main() -> None:
    """Metered, paid access in front of any ASGI app."""


# ----------------------------------------------------------------------------------------------
# serve and demo
# ----------------------------------------------------------------------------------------------


def _warn(message: str, log_format: str) -> None:
    # Before uvicorn has configured logging: as a line of the format the rest of the log will have.
    if log_format.lower() == "json":
        record = logging.LogRecord("meterguard", logging.WARNING, __file__, 0, message, None, None)
        click.echo(JsonFormatter().format(record), err=True)
    else:
        click.echo(f"warning: {message}", err=True)


def _run_server(guard: Any, options: dict[str, Any], before: Callable[[], Awaitable[None]] | None = None) -> None:
    # A seam for tests, which serve nothing: the real one is uvicorn's Server.run (_serve.py).
    serve_one(guard, options, before)


@main.command()
@click.argument("target", metavar="MODULE:APP")
@click.option(
    "--config", "config_path", envvar=CONFIG_ENV, required=True, metavar="FILE", help="The plans file (env MG_CONFIG)."
)
@click.option("--store", "store_url", envvar=STORE_ENV, metavar="URL", help="Store URL (env MG_STORE).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 512))
@click.option(
    "--log-level", type=click.Choice(LOG_LEVELS), default="info", show_default=True, help="uvicorn's and meterguard's."
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    envvar=LOG_FORMAT_ENV,
    default="text",
    show_default=True,
    help="json: one JSON object per line, uvicorn's lines included (env MG_LOG_FORMAT).",
)
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="uvicorn's line per request.")
@click.option(
    "--proxy-headers/--no-proxy-headers",
    default=True,
    show_default=True,
    help="Take the client address and scheme from X-Forwarded-For/-Proto sent by --forwarded-allow-ips (uvicorn's).",
)
@click.option(
    "--forwarded-allow-ips",
    envvar="FORWARDED_ALLOW_IPS",
    metavar="IPS",
    help="Comma-separated addresses or networks whose proxy headers are believed, or '*' "
    "(env FORWARDED_ALLOW_IPS; default 127.0.0.1,::1).",
)
@click.option("--root-path", default="", metavar="PATH", help="ASGI root_path, behind a proxy that mounts a prefix.")
def serve(
    target: str,
    config_path: str,
    store_url: str | None,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    log_format: str,
    access_log: bool,
    proxy_headers: bool,
    forwarded_allow_ips: str | None,
    root_path: str,
) -> None:
    """Serve an ASGI app wrapped in MeterGuard, with uvicorn (uvloop and httptools where installed)."""
    with _errors():
        config = load_config(config_path)
    url = resolve_store(store_url, config)
    if urlsplit(url).scheme == "memory":
        if workers > 1:
            # Each worker would count on its own: N workers would admit N times every quota.
            raise click.UsageError(
                "--workers > 1 needs a shared store: memory:// counts per process. "
                "Use --store redis://host:6379/0 (or MG_STORE)."
            )
        _warn(MEMORY_WARNING.replace("warning: ", "").replace("the command exits", "the server stops"), log_format)
    try:
        app = import_target(target)
    except ImportError as exc:
        _fail(f"cannot import {target}: {exc}")
    options = uvicorn_options(
        host=host,
        port=port,
        log_level=log_level,
        log_format=log_format.lower(),
        access_log=access_log,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        root_path=root_path,
    )

    if workers > 1:
        # uvicorn needs an import string to start worker processes; each builds its own MeterGuard.
        os.environ[TARGET_ENV] = target
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
        os.environ[STORE_ENV] = url
        run_workers("meterguard._serve:create_app", workers=workers, **options)
        return
    from .middleware import MeterGuard

    with _errors():
        guard = MeterGuard(app, config=config, store=url)
    with _interruptible():
        _run_server(guard, options)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--store",
    "store_url",
    envvar=STORE_ENV,
    metavar="URL",
    help="Store URL (default: a Redis answering at redis://127.0.0.1:6379/0, under the prefix mgdemo; else memory://).",
)
def demo(host: str, port: int, store_url: str | None) -> None:
    """Run the bundled posts API behind meterguard, with one customer and key per plan."""
    from .demo import create_demo_app, demo_config, demo_plans_path, demo_store, provision
    from .middleware import MeterGuard

    config = demo_config()
    token_env = config.admin_token_env
    token = os.environ.get(token_env)
    if not token:
        # The middleware reads the token when it is built: set it first.
        token = "mgadm_" + secrets.token_urlsafe(24)
        os.environ[token_env] = token
    url, why = demo_store(store_url)
    with _errors(), _interruptible(), demo_plans_path() as plans:
        guard = MeterGuard(create_demo_app(config), config=config, store=url)
        shown = redact(url) + ("" if why == "as given" else f" ({why})")
        base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"

        async def provision_then_announce() -> None:
            made = await provision(guard.directory)
            click.echo(demo_banner(made, guard, base, token, (redact(url), shown), str(plans)))

        # The demo shows each request (uvicorn's access log), as a first run should.
        options = uvicorn_options(
            host=host,
            port=port,
            log_level="info",
            log_format="text",
            access_log=True,
            proxy_headers=True,
            forwarded_allow_ips=None,
            root_path="",
        )
        _run_server(guard, options, provision_then_announce)


# The command groups live in modules of their own (by job); importing them registers them on main.
from . import _cli_check, _cli_customers, _cli_keys, _cli_reports  # noqa: E402, F401
