"""The admin API (CONTRACT section 7): customers, keys, usage and statements over HTTP.

Mounted by :class:`~meterguard.MeterGuard` under ``admin.path`` when the admin token variable
is set, or run on its own with :func:`create_admin_app`. Every route but ``GET /health`` and
``GET /me/usage`` needs ``Authorization: Bearer <admin token>``; ``/me/usage`` takes the
customer's own API key, exactly as the gateway does.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import get_args
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .._timespec import parse_duration
from .._types import Clock, Receive, Scope, Send
from ..auth import Authenticator, AuthFailure, Throttled
from ..billing import parse_amount
from ..config import Config, load_config
from ..customers import KEEP, Directory, Keep
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
from ..store import store_from_url
from ..store.base import CustomerStatus, Store
from ._bodies import MAX_BODY_BYTES, content_length, instant, json_object, limited, too_large, unknown_fields
from ._documents import (
    CUSTOMER_ID,
    MAX_DAYS,
    customer_daily,
    customer_json,
    customer_statement,
    customer_usage,
    key_json,
    plans_document,
)
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
from ._problems import STORE_RETRY_AFTER, invalid, json_response, problem, throttled

__all__ = ["MAX_BODY_BYTES", "AdminApp", "create_admin_app"]

PUBLIC_PATHS = frozenset({"/health", "/me/usage"})  # no admin token: one is open, one takes an API key
DEFAULT_GRACE = "24h"  # how long a rotated-out key keeps working when the request names no grace
_STATUSES: tuple[str, ...] = get_args(CustomerStatus)
ADMIN_CHALLENGE = 'Bearer realm="meterguard-admin"'
CUSTOMER_CHALLENGE = 'Bearer realm="meterguard"'


Endpoint = Callable[[Request], Awaitable[Response]]


def _route(path: str, **methods: Endpoint) -> Route:
    # One Route per path, so a wrong method gets a 405 whose Allow lists every method of the path.
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await methods[method](request)

    return Route(path, dispatch, methods=list(methods), name=path)


def _unauthenticated(detail: str, challenge: str) -> Response:
    return problem("unauthenticated", "Unauthorized", 401, detail, headers={"WWW-Authenticate": challenge})


class AdminApp:
    """A pure ASGI app around a Starlette instance; see the module docstring."""

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
    ) -> None:
        self.config = config
        self.store = store
        self.directory = directory
        self.authenticator = authenticator
        self.clock: Clock = clock or time.time
        # No token means nothing authenticates: the admin API fails closed, never open.
        self._token = token.encode("utf-8") if token else None
        self._owns_store = owns_store
        routes = [
            _route("/health", GET=self.health),
            _route("/plans", GET=self.plans),
            _route("/customers", GET=self.list_customers, POST=self.create_customer),
            _route("/customers/{customer}", GET=self.get_customer, PATCH=self.update_customer),
            _route("/customers/{customer}/keys", GET=self.list_keys, POST=self.create_key),
            _route("/keys/{key_id}", DELETE=self.revoke_key),
            _route("/keys/{key_id}/rotate", POST=self.rotate_key),
            _route("/customers/{customer}/usage", GET=self.usage),
            _route("/customers/{customer}/usage/daily", GET=self.daily),
            _route("/customers/{customer}/statement", GET=self.statement),
            _route("/me/usage", GET=self.me_usage),
        ]
        self.app = Starlette(
            routes=routes,
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if route_path(scope) not in PUBLIC_PATHS:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
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
        return _unauthenticated("Send the admin token as 'Authorization: Bearer <token>'.", ADMIN_CHALLENGE)

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

    # ------------------------------------------------------------------------------------------
    # endpoints
    # ------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        try:
            await self.store.ping()
        except StoreError:
            # 503 so that load balancers and orchestrators take the process out of rotation.
            return json_response(
                {"status": "degraded", "store": "unreachable"},
                503,
                headers={"Retry-After": str(STORE_RETRY_AFTER)},
            )
        return json_response({"status": "ok", "store": urlsplit(self.store.url).scheme})

    async def plans(self, request: Request) -> Response:
        return json_response(plans_document(self.config))

    async def create_customer(self, request: Request) -> Response:
        body = await json_object(request)
        if isinstance(body, Response):
            return body
        errors = unknown_fields(body, {"id", "plan", "anchor_day"})
        customer, plan, anchor = body.get("id"), body.get("plan"), body.get("anchor_day")
        if not isinstance(customer, str) or not CUSTOMER_ID.match(customer):
            errors.append({"field": "id", "reason": "required: 1-64 letters, digits, '_', '-' or '.'"})
        if not isinstance(plan, str):
            errors.append({"field": "plan", "reason": "required: the name of a plan in plans.yaml"})
        if anchor is not None and (type(anchor) is not int or not 1 <= anchor <= 31):
            errors.append({"field": "anchor_day", "reason": "an integer from 1 to 31"})
        if errors:
            return invalid("The customer is not valid.", errors)
        assert isinstance(customer, str) and isinstance(plan, str)
        record = await self.directory.create(customer, plan, anchor)
        location = request.scope.get("root_path", "") + f"/customers/{customer}"
        return json_response(customer_json(record), 201, headers={"Location": location})

    async def list_customers(self, request: Request) -> Response:
        return json_response({"customers": [customer_json(record) for record in await self.directory.all()]})

    async def get_customer(self, request: Request) -> Response:
        record = await self.directory.require(request.path_params["customer"])
        return json_response(customer_json(record))

    async def update_customer(self, request: Request) -> Response:
        body = await json_object(request)
        if isinstance(body, Response):
            return body
        errors = unknown_fields(body, {"plan", "status", "spend_cap"})
        plan, status = body.get("plan"), body.get("status")
        if "plan" in body and not isinstance(plan, str):
            errors.append({"field": "plan", "reason": "the name of a plan in plans.yaml"})
        if "status" in body and status not in _STATUSES:
            errors.append({"field": "status", "reason": f"one of {', '.join(_STATUSES)}"})
        # null puts the customer back on the plan's cap; a number is refused: money is a string.
        spend_cap: Decimal | None | Keep = KEEP
        if "spend_cap" in body:
            raw_cap = body["spend_cap"]
            if raw_cap is None:
                spend_cap = None
            elif isinstance(raw_cap, str):
                try:
                    spend_cap = parse_amount(raw_cap)
                except ValueError as exc:
                    errors.append({"field": "spend_cap", "reason": str(exc)})
            else:
                errors.append({"field": "spend_cap", "reason": 'a decimal string such as "1000.00", or null'})
        if not errors and plan is None and status is None and "spend_cap" not in body:
            errors.append({"field": "", "reason": "give at least one of plan, status, spend_cap"})
        if errors:
            return invalid("The change is not valid.", errors)
        record = await self.directory.update(
            request.path_params["customer"],
            plan=plan if isinstance(plan, str) else None,
            status=status if status in _STATUSES else None,
            spend_cap=spend_cap,
        )
        # Other processes see the change when their 1-second cache entries lapse; this one at once.
        self.authenticator.invalidate()
        return json_response(customer_json(record))

    async def create_key(self, request: Request) -> Response:
        body = await json_object(request, optional=True)
        if isinstance(body, Response):
            return body
        errors = unknown_fields(body, {"expires_at"})
        expires_at = instant(body, "expires_at", errors)
        if errors:
            return invalid("The key request is not valid.", errors)
        try:
            record, key = await self.directory.issue_key(request.path_params["customer"], expires_at)
        except ValueError as exc:
            return invalid(f"The key request is not valid: {exc}.", [{"field": "expires_at", "reason": str(exc)}])
        return json_response({"key": key, **key_json(record, self.clock())}, 201)

    async def rotate_key(self, request: Request) -> Response:
        body = await json_object(request, optional=True)
        if isinstance(body, Response):
            return body
        errors = unknown_fields(body, {"grace", "expires_at"})
        grace = body.get("grace", DEFAULT_GRACE)
        grace_seconds = 0
        if not isinstance(grace, str):
            errors.append({"field": "grace", "reason": 'a duration such as "24h", "90m" or "7d"'})
        else:
            try:
                grace_seconds = parse_duration(grace)
            except ValueError as exc:
                errors.append({"field": "grace", "reason": str(exc)})
        expires_at = instant(body, "expires_at", errors)
        if errors:
            return invalid("The rotation is not valid.", errors)
        try:
            record, key, old = await self.directory.rotate_key(request.path_params["key_id"], grace_seconds, expires_at)
        except ValueError as exc:
            return invalid(f"The rotation is not valid: {exc}.")
        # Other processes refuse the old key at its expiry whatever they cached; this one drops it now.
        self.authenticator.invalidate()
        now = self.clock()
        return json_response({"key": key, **key_json(record, now), "replaces": key_json(old, now)}, 201)

    async def list_keys(self, request: Request) -> Response:
        records = await self.directory.list_keys(request.path_params["customer"])
        now = self.clock()
        return json_response({"keys": [key_json(record, now) for record in records]})

    async def revoke_key(self, request: Request) -> Response:
        await self.directory.revoke_key(request.path_params["key_id"])
        self.authenticator.invalidate()
        return Response(status_code=204, headers={"Cache-Control": "no-store"})

    async def usage(self, request: Request) -> Response:
        record = await self.directory.require(request.path_params["customer"])
        period = request.query_params.get("period")
        try:
            document = await customer_usage(self.config, self.store, record, period, self.clock())
        except ValueError as exc:
            return invalid(str(exc), [{"field": "period", "reason": "YYYY-MM"}], 400)
        return json_response(document)

    async def daily(self, request: Request) -> Response:
        record = await self.directory.require(request.path_params["customer"])
        text = request.query_params.get("days", "30")
        # The length first: int() refuses more than 4,300 digits with a ValueError (a 500, once).
        if not (len(text) <= 3 and text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_DAYS):
            return invalid(
                f"days must be an integer from 1 to {MAX_DAYS}, not {text!r}.",
                [{"field": "days", "reason": f"1..{MAX_DAYS}"}],
                400,
            )
        return json_response(await customer_daily(self.store, record.id, int(text), self.clock()))

    async def statement(self, request: Request) -> Response:
        record = await self.directory.require(request.path_params["customer"])
        period = request.query_params.get("period")
        try:
            document = await customer_statement(self.config, self.store, record, period, self.clock())
        except ValueError as exc:
            return invalid(str(exc), [{"field": "period", "reason": "YYYY-MM"}], 400)
        return json_response(document)

    async def me_usage(self, request: Request) -> Response:
        # The same answers the gateway gives the same key (CONTRACT 6), so a client sees one behaviour.
        principal = await self.authenticator.check(request.scope)
        if principal is None:
            return _unauthenticated(
                f"Send your API key in the {self.config.api_key_header} header or as a bearer token.",
                CUSTOMER_CHALLENGE,
            )
        if isinstance(principal, Throttled):
            return throttled(principal.retry_after)
        if isinstance(principal, AuthFailure):
            return _unauthenticated(principal.detail, CUSTOMER_CHALLENGE + ', error="invalid_token"')
        if principal.suspended:
            return problem("customer-suspended", "Forbidden", 403, f"Customer {principal.customer!r} is suspended.")
        if principal.plan not in self.config.plans:
            return problem("plan-unavailable", "Forbidden", 403, f"Plan {principal.plan!r} is not available.")
        record = await self.directory.require(principal.customer)
        period = request.query_params.get("period")
        try:
            document = await customer_usage(self.config, self.store, record, period, self.clock())
        except ValueError as exc:
            return invalid(str(exc), [{"field": "period", "reason": "YYYY-MM"}], 400)
        return json_response(document)


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
    authenticator = Authenticator(loaded, directory)
    return AdminApp(
        config=loaded,
        store=store,
        directory=directory,
        authenticator=authenticator,
        token=token,
        clock=clock,
        owns_store=owns,
    )
