"""What every group of admin endpoints reads: the running plans, the store, and the request's body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .._types import Clock
from ..auth import Authenticator
from ..config import Config
from ..customers import Directory
from ..metrics import Metrics
from ..reload import ReloadResult
from ..store.base import Store
from ._bodies import json_object
from ._models import errors_of, shape
from ._problems import invalid, json_response

Body = TypeVar("Body", bound=BaseModel)
Reloader = Callable[[], Awaitable[ReloadResult]]


class AdminBase:
    """Attributes of AdminApp that its endpoint groups (mixins) use."""

    config: Config
    store: Store
    directory: Directory
    authenticator: Authenticator
    clock: Clock
    metrics: Metrics
    reloader: Reloader | None


async def parse_body(request: Request, model: type[Body], *, optional: bool = False) -> Body | Response:
    """The body as ``model``, or the problem to answer: 400 when it is not a JSON object (or nests
    too deep), 422 when invalid. ``optional``: no body is ``{}``, every field's default."""
    body = await json_object(request, optional=optional)
    if isinstance(body, Response):
        return body
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        return invalid("The request body is not valid.", errors_of(exc))


def document(
    model: type[BaseModel], content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response shaped by its model (the one the OpenAPI document names for it)."""
    return json_response(shape(model, content), status, headers=headers)
