"""The OpenAPI 3.1 document of the admin API, generated from the operation table and the pydantic models."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from functools import cache
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import _models as m
from ._spec import OPERATIONS, Answer, Operation, Param

_REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"\{([a-z_]+)\}")
_PATH_PARAMS = {
    "customer": ("A customer id.", r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"),
    "key_id": ("A key id.", None),
}
# RFC 3339 as _timespec.parse_instant reads it, but only for days every year has (no February 29th):
# what the pattern admits, the API must accept.
_MONTH_DAY = r"((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)"
_TIME = r"[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"


def _models() -> list[type[BaseModel]]:
    found: dict[str, type[BaseModel]] = {}
    for op in OPERATIONS:
        for answer in (*op.responses.values(), op.body):
            if isinstance(answer, type) and issubclass(answer, BaseModel):
                found[answer.__name__] = answer
    found["Problem"] = m.Problem
    return list(found.values())


def _content(answer: Answer, status: int) -> dict[str, Any] | None:
    if answer is None:
        return None
    if isinstance(answer, str):
        schema: dict[str, Any] = {"type": "object"} if answer == "application/json" else {"type": "string"}
        return {answer: {"schema": schema}}
    media = "application/problem+json" if answer is m.Problem else "application/json"
    return {media: {"schema": {"$ref": _REF.format(model=answer.__name__)}}}


def _param(param: Param, where: str, required: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": param.kind}
    if param.pattern:
        schema["pattern"] = param.pattern
    if param.minimum is not None:
        schema["minimum"] = param.minimum
    if param.maximum is not None:
        schema["maximum"] = param.maximum
    return {"name": param.name, "in": where, "required": required, "description": param.description, "schema": schema}


def future_instant(year: int) -> str:
    """A pattern for times a key may expire at, seen from ``year``: whole decades that all lie
    ahead (from year + 2 on, so no offset or year's end can put one in the past) and within the
    100 years a key may live (up to year + 89)."""
    first, last = (year + 1) // 10 + 1, (year + 90) // 10 - 1
    decades = "|".join(f"{decade:03d}" for decade in range(first, last + 1))
    return f"^({decades})[0-9]-{_MONTH_DAY}{_TIME}$"


def _operation(op: Operation) -> dict[str, Any]:
    responses: dict[int, Any] = dict(op.responses)
    if op.auth != "none":
        responses.setdefault(401, m.Problem)
        # Past auth.failed_limit wrong tokens or keys from one address (the right admin token still works).
        responses.setdefault(429, m.Problem)
    if op.handler not in ("static", "openapi", "metrics_text"):
        responses.setdefault(503, m.Problem)  # the store did not answer
    described: dict[str, Any] = {}
    for status, answer in sorted(responses.items()):
        entry: dict[str, Any] = {"description": HTTPStatus(status).phrase}
        content = _content(answer, status)
        if content is not None:
            entry["content"] = content
        described[str(status)] = entry
    parameters = [
        _param(Param(name, *_PATH_PARAMS.get(name, ("", None))), "path", True) for name in _PARAM.findall(op.path)
    ]
    parameters += [_param(param, "query", False) for param in op.query]
    operation: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{op.handler}_{len(op.path.split('/'))}{op.path.replace('/', '_')}",
        "summary": op.summary,
        "tags": list(op.tags),
        "responses": described,
    }
    operation["operationId"] = re.sub(r"[^A-Za-z0-9_]", "", operation["operationId"])
    if parameters:
        operation["parameters"] = parameters
    if op.body is not None:
        operation["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=op.body.__name__)}}},
        }
    operation["security"] = {"admin": [{"admin": []}], "none": [], "customer": [{"apiKey": []}, {"customer": []}]}[
        op.auth
    ]
    return operation


def _string_branch(schema: dict[str, Any]) -> dict[str, Any]:
    """The string schema of a property that is a string, or a string or null."""
    return next(branch for branch in schema.get("anyOf", [schema]) if branch.get("type") == "string")


def _version() -> str:
    try:
        return version("meterguard")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def openapi_document(prefix: str = "", plans: tuple[str, ...] = (), year: int | None = None) -> dict[str, Any]:
    """The document; ``prefix`` (the admin path as mounted) becomes the server URL, ``plans`` (the
    loaded plans) the values a body may name: a body naming another plan is refused (422), and
    ``year`` (default: this one, UTC) the years a key's ``expires_at`` may name."""
    return _document(prefix, plans, datetime.fromtimestamp(time.time(), UTC).year if year is None else year)


@cache
def _document(prefix: str, plans: tuple[str, ...], year: int) -> dict[str, Any]:
    _, schemas = models_json_schema([(model, "validation") for model in _models()], ref_template=_REF)
    if plans:
        for model in ("CustomerCreate", "CustomerUpdate"):
            _string_branch(schemas["$defs"][model]["properties"]["plan"])["enum"] = list(plans)
    for model in ("KeyCreate", "KeyRotate"):
        _string_branch(schemas["$defs"][model]["properties"]["expires_at"])["pattern"] = future_instant(year)
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meterguard admin API",
            "version": _version(),
            "description": "Customers, keys, usage and statements; metrics, reload and the dashboard.",
        },
        "servers": [{"url": prefix or "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "admin": {"type": "http", "scheme": "bearer", "description": "The admin token (admin.token_env)."},
                "customer": {"type": "http", "scheme": "bearer", "description": "A customer's API key."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }
