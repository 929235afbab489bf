"""What every group of admin endpoints reads: the running plans, the store, and the request's body."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .._types import Clock, Scope
from ..auth import Authenticator
from ..config import Config
from ..customers import Directory
from ..metrics import Metrics
from ..reload import ReloadResult
from ..store.base import Store
from ._models import errors_of, shape
from ._problems import invalid, json_response

Body = TypeVar("Body", bound=BaseModel)
Reloader = Callable[[], Awaitable[ReloadResult]]


def route_path(scope: Scope) -> str:
    """The path inside the admin API.

    As Starlette routes: a server that keeps root_path inside path (uvicorn >= 0.26, Mount) and one
    that strips it (meterguard's own middleware) must both reach the same route.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :] or "/"
    return path


class AdminBase:
    """Attributes of AdminApp that its endpoint groups (mixins) use."""

    config: Config
    store: Store
    directory: Directory
    authenticator: Authenticator
    clock: Clock
    metrics: Metrics
    reloader: Reloader | None


async def parse_body(request: Request, model: type[Body]) -> Body | Response:
    """The body as ``model``, or the problem to answer: 400 when it is not a JSON object, 422 when invalid."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return invalid("The body is not valid JSON.", status=400)
    if not isinstance(body, dict):
        return invalid("The body must be a JSON object.", status=400)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        return invalid("The request body is not valid.", errors_of(exc))


def document(
    model: type[BaseModel], content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response shaped by its model (the one the OpenAPI document names for it)."""
    return json_response(shape(model, content), status, headers=headers)
