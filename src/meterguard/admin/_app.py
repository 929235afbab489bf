"""The admin app: token check, routing from the operation table, exceptions as problems, standalone use."""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._types import Clock, Receive, Scope, Send
from ..auth import Authenticator
from ..config import Config, load_config
from ..customers import Directory
from ..errors import (
    ConfigError,
    ConfigIssue,
    CustomerExists,
    CustomerNotFound,
    KeyNotFound,
    PlanNotFound,
    StoreError,
)
from ..metrics import Metrics
from ..reload import RELOAD_EVENT, ReloadResult, keep_restart_only, summary
from ..store import store_from_url
from ..store.base import Store
from ._base import Reloader, route_path
from ._customers import CustomerEndpoints
from ._operators import OperatorEndpoints
from ._problems import STORE_RETRY_AFTER, invalid, problem
from ._spec import OPERATIONS, PUBLIC_PATHS
from ._usage import ADMIN_CHALLENGE, UsageEndpoints, unauthenticated

MAX_BODY_BYTES = 64 * 1024  # admin bodies are a few fields; anything larger is a mistake or an attack

Endpoint = Callable[[Request], Awaitable[Response]]


def _route(path: str, methods: dict[str, Endpoint]) -> Route:
    # One Route per path, so a wrong method gets a 405 whose Allow lists every method of the path.
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await methods[method](request)

    return Route(path, dispatch, methods=list(methods), name=path)


class AdminApp(CustomerEndpoints, UsageEndpoints, OperatorEndpoints):
    """A pure ASGI app around a Starlette instance; see the package docstring."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        directory: Directory,
        authenticator: Authenticator,
        token: str | None,
        clock: Clock | None = None,
        owns_store: bool = False,
        metrics: Metrics | None = None,
        reload: Reloader | None = None,
    ) -> None:
        self.use(config, directory, authenticator)
        self.store = store
        self.clock = clock or time.time
        self.metrics = metrics or Metrics()
        self.reloader = reload
        # No token means nothing authenticates: the admin API fails closed, never open.
        self._token = token.encode("utf-8") if token else None
        self._owns_store = owns_store
        by_path: dict[str, dict[str, Endpoint]] = {}
        for op in OPERATIONS:
            by_path.setdefault(op.path, {})[op.method] = getattr(self, op.handler)
        self.app = Starlette(
            routes=[_route(path, methods) for path, methods in by_path.items()],
            exception_handlers={
                HTTPException: _http_error,
                StoreError: _store_error,
                CustomerNotFound: _customer_not_found,
                KeyNotFound: _key_not_found,
                PlanNotFound: self._plan_not_found,
                CustomerExists: _customer_exists,
            },
            lifespan=self._lifespan,
            max_body_size=MAX_BODY_BYTES,
        )

    def use(self, config: Config, directory: Directory, authenticator: Authenticator) -> None:
        """Serve another version of plans.yaml (a reload); one synchronous step."""
        self.config = config
        self.directory = directory
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) not in PUBLIC_PATHS and not self._authorized(scope):
            response = unauthenticated("Send the admin token as 'Authorization: Bearer <token>'.", ADMIN_CHALLENGE)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None:
            return False
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    # Constant time: the token is a shared secret (LANDSCAPE, "hmac.compare_digest").
                    return hmac.compare_digest(token.strip(), self._token)
        return False

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if self._owns_store:
                await self.store.aclose()

    async def _plan_not_found(self, request: Request, exc: Exception) -> Response:
        text = str(exc)
        # Directory raises PlanNotFound(name); usage of a customer on a removed plan says more.
        detail = text if " " in text else f"No plan {text!r} in plans.yaml."
        return problem("unknown-plan", "Unknown plan", 422, detail, plans=sorted(self.config.plans))


# ----------------------------------------------------------------------------------------------
# exceptions -> problems
# ----------------------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        return problem("not-found", "Not found", 404, f"No admin route {request.method} {route_path(request.scope)}.")
    if exc.status_code == 405:
        return problem(
            "method-not-allowed",
            "Method not allowed",
            405,
            f"{request.method} is not allowed here.",
            headers=headers,
        )
    if exc.status_code == 413:
        return invalid(f"The body is larger than {MAX_BODY_BYTES} bytes.", status=413)
    return problem("http-error", exc.detail, exc.status_code, exc.detail, headers=headers)


async def _store_error(request: Request, exc: Exception) -> Response:
    return problem(
        "store-unavailable",
        "Service Unavailable",
        503,
        f"The store did not answer: {exc}",
        headers={"Retry-After": str(STORE_RETRY_AFTER)},
    )


async def _customer_not_found(request: Request, exc: Exception) -> Response:
    return problem("customer-not-found", "Customer not found", 404, f"No customer {str(exc)!r}.")


async def _key_not_found(request: Request, exc: Exception) -> Response:
    key_id = request.path_params.get("key_id")
    detail = f"No key {key_id!r}." if str(exc) == key_id else f"{exc}."
    return problem("key-not-found", "Key not found", 404, detail)


async def _customer_exists(request: Request, exc: Exception) -> Response:
    return problem("customer-exists", "Customer exists", 409, f"A customer {str(exc)!r} already exists.")


# ----------------------------------------------------------------------------------------------
# standalone
# ----------------------------------------------------------------------------------------------


def create_admin_app(
    config: Config | str | os.PathLike[str],
    store: Store | str | None = None,
    *,
    token: str | None = None,
    clock: Clock | None = None,
) -> AdminApp:
    """The admin API on its own (e.g. ``uvicorn --factory``-style, or behind a private ingress).

    ``store`` follows the usual precedence: argument, ``MG_STORE``, the file's ``store:``,
    ``memory://``. ``token`` defaults to the variable named by ``admin.token_env``; with none,
    a ConfigError is raised rather than serving an API nobody can (or everybody could) use.
    ``POST /reload`` rereads the file here and tells every gateway on the store to do the same.
    """
    loaded = config if isinstance(config, Config) else load_config(config)
    token = token or os.environ.get(loaded.admin_token_env)
    if not token:
        raise ConfigError(
            [
                ConfigIssue(
                    loaded.source,
                    None,
                    "admin.token_env",
                    f"set {loaded.admin_token_env} (or pass token=) to serve the admin API",
                )
            ]
        )
    owns = store is None or isinstance(store, str)
    if store is None or isinstance(store, str):
        url = store or os.environ.get("MG_STORE") or loaded.store or "memory://"
        store = store_from_url(url, clock=clock) if clock is not None else store_from_url(url)
    directory = Directory(loaded, store, clock=clock) if clock is not None else Directory(loaded, store)
    admin = AdminApp(
        config=loaded,
        store=store,
        directory=directory,
        authenticator=Authenticator(loaded, directory),
        token=token,
        clock=clock,
        owns_store=owns,
    )
    admin.reloader = lambda: _reload_standalone(admin, clock)
    return admin


async def _reload_standalone(admin: AdminApp, clock: Clock | None) -> ReloadResult:
    running = admin.config
    if not os.path.isfile(running.source):
        return ReloadResult(False, errors=(f"{running.source}: not a file; nothing to reload",))
    try:
        loaded = load_config(running.source)
    except ConfigError as exc:
        admin.metrics.reloaded(False)
        return ReloadResult(False, errors=tuple(str(issue) for issue in exc.issues))
    loaded, restart_required = keep_restart_only(running, loaded)
    directory = Directory(loaded, admin.store, clock=clock) if clock is not None else Directory(loaded, admin.store)
    admin.use(loaded, directory, Authenticator(loaded, directory))
    admin.metrics.reloaded(True)
    notified = True
    try:
        await admin.store.notify(RELOAD_EVENT + "admin")
    except StoreError:
        notified = False
    return ReloadResult(True, {**summary(running, loaded, restart_required), "notified": notified})
