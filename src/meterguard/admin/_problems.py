"""RFC 9457 problem details for the admin API, and its JSON responses.

Every admin response is ``Cache-Control: no-store``: customer records, usage and (once) keys
must not sit in a shared cache or a browser's history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import Response

PROBLEMS = "https://meterguard.dev/problems/"
NO_STORE = {"Cache-Control": "no-store"}
STORE_RETRY_AFTER = 5  # seconds a client should wait before asking a store that did not answer again


def json_response(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(body, status_code=status, headers={**NO_STORE, **(headers or {})}, media_type="application/json")


def problem(
    kind: str,
    title: str,
    status: int,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    """``kind`` is the last segment of the problem type URI under https://meterguard.dev/problems/."""
    body = {"type": PROBLEMS + kind, "title": title, "status": status, "detail": detail, **extra}
    encoded = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(
        encoded,
        status_code=status,
        headers={**NO_STORE, **(headers or {})},
        media_type="application/problem+json",
    )


def invalid(detail: str, errors: list[dict[str, str]] | None = None, status: int = 422) -> Response:
    extra: dict[str, Any] = {"errors": errors} if errors else {}
    return problem("invalid-request", "Invalid request", status, detail, **extra)


def throttled(retry_after: int) -> Response:
    return problem(
        "too-many-failed-authentications",
        "Too Many Requests",
        429,
        f"Too many failed authentications from this address; retry in {retry_after} s.",
        headers={"Retry-After": str(retry_after)},
    )
