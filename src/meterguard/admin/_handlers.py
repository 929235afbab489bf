"""Exceptions -> problem details: every admin error, expected or not, is application/problem+json."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from .._types import Scope
from ._bodies import too_large
from ._problems import STORE_RETRY_AFTER, problem


def route_path(scope: Scope) -> str:
    # As Starlette routes: a server that keeps root_path inside path (uvicorn >= 0.26, Mount)
    # and one that strips it (meterguard's own middleware) must both reach the same route.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        path = route_path(request.scope)
        hint = " Admin paths take no trailing slash." if path.endswith("/") and len(path) > 1 else ""
        return problem("not-found", "Not found", 404, f"No admin route {request.method} {path}.{hint}")
    if exc.status_code == 405:
        return problem(
            "method-not-allowed",
            "Method not allowed",
            405,
            f"{request.method} is not allowed here.",
            headers=headers,
        )
    if exc.status_code == 413:
        return too_large()
    return problem("http-error", exc.detail, exc.status_code, exc.detail, headers=headers)


async def store_error(request: Request, exc: Exception) -> Response:
    return problem(
        "store-unavailable",
        "Service Unavailable",
        503,
        f"The store did not answer: {exc}",
        headers={"Retry-After": str(STORE_RETRY_AFTER)},
    )


async def customer_not_found(request: Request, exc: Exception) -> Response:
    return problem("customer-not-found", "Customer not found", 404, f"No customer {str(exc)!r}.")


async def key_not_found(request: Request, exc: Exception) -> Response:
    key_id = request.path_params.get("key_id")
    detail = f"No key {key_id!r}." if str(exc) == key_id else f"{exc}."
    return problem("key-not-found", "Key not found", 404, detail)


async def key_not_active(request: Request, exc: Exception) -> Response:
    return problem("key-not-active", "Key not active", 409, f"{exc}.")


async def unexpected(request: Request, exc: Exception) -> Response:
    # A defect of ours, still answered in the admin API's one format; Starlette logs the traceback.
    return problem("internal-error", "Internal Server Error", 500, "The admin API failed; see the server log.")


async def customer_exists(request: Request, exc: Exception) -> Response:
    return problem("customer-exists", "Customer exists", 409, f"A customer {str(exc)!r} already exists.")
