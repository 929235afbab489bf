"""The admin app: token check (and its throttle), body bounds, routing from the operation table,
exceptions as problems, standalone use."""

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
    KeyNotActive,
    KeyNotFound,
    PlanNotFound,
    StoreError,
)
from ..metrics import Metrics
from ..reload import RELOAD_EVENT, ReloadResult, keep_restart_only, summary
from ..store import store_from_url
from ..store.base import Store
from ._base import Reloader
from ._bodies import MAX_BODY_BYTES, content_length, limited, too_large
from ._customers import CustomerEndpoints
from ._handlers import (
    customer_exists,
    customer_not_found,
    http_error,
    key_not_active,
    key_not_found,
    route_path,
    store_error,
    unexpected,
)
from ._operators import OperatorEndpoints
from ._problems import problem, throttled
from ._spec import OPERATIONS, PUBLIC_PATHS
from ._usage import ADMIN_CHALLENGE, UsageEndpoints, unauthenticated

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
                HTTPException: http_error,
                StoreError: store_error,
                CustomerNotFound: customer_not_found,
                KeyNotFound: key_not_found,
                PlanNotFound: self._plan_not_found,
                CustomerExists: customer_exists,
                KeyNotActive: key_not_active,
                Exception: unexpected,
            },
            lifespan=self._lifespan,
        )
        # Starlette would redirect /customers/ to /customers, but builds the Location without the
        # admin prefix (it sits in root_path): a 404 problem that names the slash is the honest answer.
        self.app.router.redirect_slashes = False

    def use(self, config: Config, directory: Directory, authenticator: Authenticator) -> None:
        """Serve another version of plans.yaml (a reload); one synchronous step."""
        self.config = config
        self.directory = directory
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if route_path(scope) not in PUBLIC_PATHS:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        # Starlette's own max_body_size answers plain text where no body is read; these are problems.
        length = content_length(scope)
        if length is not None and length > MAX_BODY_BYTES:
            await too_large()(scope, receive, send)  # refused before a byte of it is read
            return
        await self.app(scope, limited(receive), send)

    def _refusal(self, scope: Scope) -> Response | None:
        """None when the admin token is right; else a 401, or a 429 past auth.failed_limit."""
        token = self._bearer(scope)
        if token is not None and self._token is not None and hmac.compare_digest(token, self._token):
            # Constant time: the token is a shared secret (LANDSCAPE, "hmac.compare_digest").
            return None
        throttle = self.authenticator.throttle
        if token is not None and throttle.enabled:
            # A wrong admin token is a failed authentication like a wrong API key, and counts with them.
            address = throttle.address(scope)
            wait = throttle.wait(address)
            if wait:
                return throttled(wait)
            throttle.failed(address)
        return unauthenticated("Send the admin token as 'Authorization: Bearer <token>'.", ADMIN_CHALLENGE)

    @staticmethod
    def _bearer(scope: Scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer" and token.strip():
                    return bytes(token.strip())
        return None

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
